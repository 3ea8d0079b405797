"""SCAFFOLD, FedDyn and FedNova against the papers' update equations, written here in numpy.

Each test runs two real rounds of fedlab (in-process) with multinomial logistic regression on
iris, full-batch local gradient descent (batch larger than any client, so no batch order is
involved), a subset of the clients sampled per round, and checks the new global model, the
clients' saved state and the server's state against an independent implementation of the
paper's equations that reads only the data, the initial model and who trained when (from the
record). Nothing in it calls fedlab's algorithm code.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

COMMON = (
    "dataset=iris", "model=logreg", "num_clients=3", "num_rounds=2",
    "client.batch_size=1000", "client.lr=0.1", "client.momentum=0.0",
    "client.local_epochs=3", "strategy.fraction_train=0.67",
)
TOL = 1e-6


def softmax_grad(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray):
    """Gradient of the mean cross-entropy of softmax(x w^T + b)."""
    z = x @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    return p.T @ x, p.sum(axis=0)


def local_sgd(theta, x, y, steps, lr, extra_grad=None, momentum=0.0):
    """``steps`` full-batch (heavy-ball) SGD steps on ``theta`` = (w, b); ``extra_grad``
    adds an algorithm's own gradient term."""
    w, b = (t.astype(np.float64).copy() for t in theta)
    buf = None
    for _ in range(steps):
        gw, gb = softmax_grad(w, b, x, y)
        if extra_grad is not None:
            ew, eb = extra_grad(w, b)
            gw, gb = gw + ew, gb + eb
        buf = (gw, gb) if buf is None else (momentum * buf[0] + gw, momentum * buf[1] + gb)
        w, b = w - lr * buf[0], b - lr * buf[1]
    return w, b


def train_rows(run_dir: Path) -> dict[int, dict[int, int]]:
    """round -> {client: local steps} of the successful training replies."""
    rounds: dict[int, dict[int, int]] = {}
    with (run_dir / "clients.csv").open() as f:
        for row in csv.DictReader(f):
            if row["phase"] == "train" and row["status"] == "ok":
                rounds.setdefault(int(row["round"]), {})[int(row["client"])] = int(
                    row["local_steps"]
                )
    return rounds


def setup(run_inprocess, *overrides: str):
    exp, fed, record, grid = run_inprocess(*COMMON, *overrides)
    first = next(m for m in grid.sent if m.metadata.message_type == "train")
    init = first.content["arrays"]
    theta0 = (init["linear.weight"].numpy(), init["linear.bias"].numpy())
    data = {pid: fed.client(pid)[0] for pid in range(exp.cfg.num_clients)}
    final = load_file(str(record.dir / "model.safetensors"))
    steps = train_rows(record.dir)
    assert len(steps[1]) == 2 and len(steps[2]) == 2  # 2 of 3 clients each round
    return exp, record, theta0, data, final, steps


def close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL)


def test_scaffold_matches_the_paper(run_inprocess) -> None:
    """Karimireddy et al. 2020, Algorithm 1 with option II."""
    _, record, x, data, final, steps = setup(run_inprocess, "strategy=scaffold")
    lr, n_total = 0.1, 3
    zero = tuple(np.zeros_like(t, dtype=np.float64) for t in x)
    c = zero
    c_i = {pid: zero for pid in data}
    x = tuple(t.astype(np.float64) for t in x)
    for r in (1, 2):
        dys, dcs = [], []
        for pid, k in sorted(steps[r].items()):
            ci = c_i[pid]
            y = local_sgd(x, data[pid].x, data[pid].y, k, lr,
                          lambda w, b, ci=ci, c=c: (c[0] - ci[0], c[1] - ci[1]))
            c_plus = tuple(ci[j] - c[j] + (x[j] - y[j]) / (k * lr) for j in range(2))
            dys.append(tuple(y[j] - x[j] for j in range(2)))
            dcs.append(tuple(c_plus[j] - ci[j] for j in range(2)))
            c_i[pid] = c_plus
        s = len(dys)
        x = tuple(x[j] + sum(d[j] for d in dys) / s for j in range(2))
        c = tuple(c[j] + s / n_total * sum(d[j] for d in dcs) / s for j in range(2))
    close(final["linear.weight"], x[0])
    close(final["linear.bias"], x[1])
    for pid in steps[1].keys() | steps[2].keys():
        last = max(r for r in (1, 2) if pid in steps[r])
        saved = load_file(str(record.dir / "client_state" / str(pid) / f"{last}.safetensors"))
        close(saved["linear.weight"], c_i[pid][0])
        close(saved["linear.bias"], c_i[pid][1])
    server = load_file(str(record.dir / "checkpoint.safetensors"))
    close(server["strategy/outer.control/linear.weight"], c[0])
    close(server["strategy/outer.control/linear.bias"], c[1])


def test_feddyn_matches_the_paper(run_inprocess) -> None:
    """Acar et al. 2021, Algorithm 1 (alpha = 0.01, h_0 = 0, g_i = 0 at first)."""
    _, record, theta, data, final, steps = setup(run_inprocess, "strategy=feddyn")
    alpha, lr, m = 0.01, 0.1, 3
    zero = tuple(np.zeros_like(t, dtype=np.float64) for t in theta)
    g = {pid: zero for pid in data}
    h = zero
    theta = tuple(t.astype(np.float64) for t in theta)
    for r in (1, 2):
        ws = []
        for pid, k in sorted(steps[r].items()):
            gi, th = g[pid], theta
            w = local_sgd(th, data[pid].x, data[pid].y, k, lr,
                          lambda a, b, gi=gi, th=th: (-gi[0] + alpha * (a - th[0]),
                                                      -gi[1] + alpha * (b - th[1])))
            g[pid] = tuple(gi[j] - alpha * (w[j] - th[j]) for j in range(2))
            ws.append(w)
        h = tuple(h[j] - alpha / m * sum(w[j] - theta[j] for w in ws) for j in range(2))
        theta = tuple(sum(w[j] for w in ws) / len(ws) - h[j] / alpha for j in range(2))
    close(final["linear.weight"], theta[0])
    close(final["linear.bias"], theta[1])
    for pid in steps[2]:
        saved = load_file(str(record.dir / "client_state" / str(pid) / "2.safetensors"))
        close(saved["linear.weight"], g[pid][0])
        close(saved["linear.bias"], g[pid][1])
    server = load_file(str(record.dir / "checkpoint.safetensors"))
    close(server["strategy/outer.h/linear.weight"], h[0])


def test_fednova_matches_the_paper(run_inprocess) -> None:
    """Wang et al. 2020, Eq. 6-9: heterogeneous local steps (stragglers do part of the
    epochs), momentum 0.5, updates normalised by ||a_i||_1 and rescaled by tau_eff."""
    _, _, x, data, final, steps = setup(
        run_inprocess, "strategy=fednova", "client.momentum=0.5", "client.local_epochs=4",
        "stragglers.fraction=0.5", "strategy.straggler_policy=partial",
    )
    assert len({k for r in steps.values() for k in r.values()}) > 1  # unequal tau_i
    lr, rho = 0.1, 0.5
    x = tuple(t.astype(np.float64) for t in x)
    for r in (1, 2):
        clients = sorted(steps[r].items())
        n = np.array([len(data[pid].y) for pid, _ in clients], dtype=np.float64)
        p = n / n.sum()
        norms, deltas = [], []
        for pid, k in clients:
            y = local_sgd(x, data[pid].x, data[pid].y, k, lr, momentum=rho)
            a = np.array([(1 - rho ** (k - t)) / (1 - rho) for t in range(k)])  # a_i's entries
            norms.append(a.sum())
            deltas.append(tuple(x[j] - y[j] for j in range(2)))
        tau_eff = float(np.dot(p, norms))
        x = tuple(
            x[j] - tau_eff * sum(pi * d[j] / a for pi, d, a in zip(p, deltas, norms, strict=True))
            for j in range(2)
        )
    close(final["linear.weight"], x[0])
    close(final["linear.bias"], x[1])


@pytest.mark.parametrize("strategy", ["scaffold", "feddyn"])
def test_stateful_updates_need_state_from_earlier_rounds(run_inprocess, strategy) -> None:
    """The state file a client reads in round 2 is the one it wrote in round 1 (a client's
    later rounds see its own history, not a fresh start)."""
    _, record, _, _, _, steps = setup(run_inprocess, f"strategy={strategy}")
    both = steps[1].keys() & steps[2].keys()
    for pid in both:
        versions = sorted(p.name for p in (record.dir / "client_state" / str(pid)).iterdir())
        assert versions == ["1.safetensors", "2.safetensors"]
