#!/usr/bin/env bash
# Certificates and keys for running fedlab on Flower's Deployment Engine (docs/deployment.md).
#
#   scripts/make_certs.sh [OUT_DIR] [NUM_NODES] [EXTRA_SAN ...]
#
# OUT_DIR (default: certificates/, git-ignored) receives
#   ca.crt, ca.key             a private certificate authority (keep ca.key off the nodes)
#   server.pem, server.key     the SuperLink's TLS certificate, signed by the CA, valid for
#                              localhost and 127.0.0.1 plus every EXTRA_SAN
#                              ("DNS:superlink.example.org", "IP:10.0.0.5")
#   node-K, node-K.pub         K = 0..NUM_NODES-1 (default 2): each SuperNode's
#                              authentication key pair (ECDSA P-384, OpenSSH format), for
#                              `flower-superlink --enable-supernode-auth`
#
# The SuperLink takes --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile
# server.key; every SuperNode and the `flwr` CLI only need ca.crt (and a node its node-K).
# Private keys are written with mode 600. Certificates are valid for 365 days.
set -euo pipefail

out="${1:-certificates}"
nodes="${2:-2}"
shift $(( $# > 2 ? 2 : $# ))
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "make_certs.sh: $tool not found" >&2; exit 2; }
done
[[ "$nodes" =~ ^[0-9]+$ ]] || { echo "make_certs.sh: NUM_NODES must be a number" >&2; exit 2; }

san="DNS:localhost,IP:127.0.0.1"
for extra in "$@"; do san="$san,$extra"; done

mkdir -p "$out"
umask 077
cd "$out"

openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes \
    -keyout ca.key -out ca.crt -subj "/CN=fedlab deployment CA" 2>/dev/null

openssl req -newkey rsa:4096 -sha256 -nodes \
    -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
cat > server.ext <<EOF
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
EOF
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out server.pem -days 365 -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.crt server.pem

for ((k = 0; k < nodes; k++)); do
    rm -f "node-$k" "node-$k.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedlab-node-$k" -f "node-$k"
    chmod 644 "node-$k.pub"
done

echo "make_certs.sh: wrote CA, SuperLink certificate ($san) and $nodes node key pairs to $PWD"
