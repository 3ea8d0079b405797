"""The peer of ``benchmarks/run.py``: fedlab's benchmark workload as a vanilla Flower 1.42 app.

    .venv/bin/python benchmarks/flower_peer.py [--rounds 20] [--clients 100] [--per-round 10]

Written as Flower's quickstart-pytorch example writes an app (Message API ``ClientApp`` with
``@app.train``/``@app.evaluate``, a ``ServerApp`` running ``FedAvg.start`` with a central
``evaluate_fn``, ``run_simulation`` on Ray) and nothing of fedlab's, so it times Flower as a
user gets it. Last line: ``flower_peer: accuracy A seconds S``, A the central test accuracy
after the last round, S the wall seconds of this whole process (interpreter start included,
as run.py times a whole ``fedlab-run``).

The workload is run.py's ``WORKLOAD`` (fedlab's defaults plus num_clients=100,
fraction_train=0.1, partition=iid, num_rounds=20, local_epochs=1, carbon=off):

* data: digits / 16, fedlab's stratified 80/20 split (conf/dataset/digits.yaml, seed 0), the
  pool table shuffled with seed 0 and split by flwr-datasets' ``IidPartitioner``; 20% of each
  client's rows held out as its local test split (``client_test_fraction``) with fedlab's
  generator: every client holds exactly the rows it holds in fedlab. run.py uses iid because
  the default Dirichlet (alpha 0.5, min 10 per client) cannot split 1437 rows 100 ways
  (fedlab refuses; so does flwr-datasets); ``--partition dirichlet`` has it for <= 64 clients.
* model: fedlab's default MLP (conf/model/mlp.yaml: 64-128-10, ReLU, no dropout or norm),
  seeded as fedlab seeds the global model; SGD lr 0.1, momentum 0.9, batch 32, shuffled
  (conf/client/sgd.yaml), 1 local epoch; FedAvg weighted by ``num-examples``.
* evaluation: the central test split every round (rounds 0..N, as fedlab's server) and
  federated evaluation of every client on its local split (conf/strategy/fedavg.yaml's
  ``fraction_evaluate: 1.0``, which run.py keeps).
* engine: Ray with one CPU per client actor (fedlab's ``simulation=local``; Flower's default
  of 2 would run one client at a time on 2 cores), one torch thread per client.

Where it cannot match: Flower samples nodes with an unseeded ``random.sample`` and gives the
nodes random ids, so which clients train each round differs from fedlab's seeded scheduler and
from run to run, and so does the accuracy (the data, the initial model and the central test
loss of round 0 are fedlab's exactly). Batch shuffles are unseeded too (fedlab seeds one
generator per client and round; with 12 examples per client and batch 32 there is one batch).
The client actors import flwr-datasets and scikit-learn and partition the data themselves
(~1.5 s each, once), as a Flower app does; fedlab partitions once in the driver.
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import numpy as np
import psutil
import torch
from datasets import Dataset, disable_progress_bars
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SEED = 0
Split = tuple[torch.Tensor, torch.Tensor]


def make_model() -> nn.Module:
    """fedlab's default MLP (fedlab/fl/model.py, conf/model/mlp.yaml): same layers, same order."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


@functools.cache
def federation(num_clients: int, partition: str) -> tuple[list[tuple[Split, Split]], Split]:
    """Each client's (train, local test) and the central test split; built once per process
    (driver and each Ray actor), as quickstart-pytorch caches its ``FederatedDataset``."""
    disable_progress_bars()
    digits = load_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)
    pool, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=SEED, stratify=y)
    pool, test = np.sort(pool), np.sort(test)
    table = Dataset.from_dict({"x": x[pool], "label": y[pool], "row": np.arange(len(pool))})
    table = table.shuffle(seed=SEED).flatten_indices()  # fedlab shuffles before partitioning
    partitioner = (
        IidPartitioner(num_partitions=num_clients)
        if partition == "iid"
        else DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=0.5,
                                  min_partition_size=10, self_balancing=False, seed=SEED)
    )  # fmt: skip
    partitioner.dataset = table
    rng = np.random.default_rng([SEED, 2])  # fedlab's local train/test split, client by client
    clients = []
    for pid in range(num_clients):
        part = partitioner.load_partition(pid).with_format("torch")[:]
        by_row = torch.argsort(part["row"])  # fedlab's order: the pool's
        px, py = part["x"][by_row], part["label"][by_row]
        order = rng.permutation(len(py))
        cut = int(len(py) * 0.2) if len(py) > 1 else 0
        train_rows, test_rows = np.sort(order[cut:]), np.sort(order[:cut])
        clients.append(((px[train_rows], py[train_rows]), (px[test_rows], py[test_rows])))
    return clients, (torch.from_numpy(x[test]), torch.from_numpy(y[test]))


@torch.no_grad()
def test_fn(model: nn.Module, data: Split) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fedlab's ``evaluate``: one pass, no batches needed)."""
    model.eval()
    logits = model(data[0])
    loss = nn.functional.cross_entropy(logits, data[1]).item()
    return loss, (logits.argmax(dim=1) == data[1]).float().mean().item()


def client_data(msg: Message, context: Context) -> tuple[Split, Split]:
    """This node's partition; the partition scheme comes in the message's config, since
    ``run_simulation`` gives the ClientApp an empty run_config."""
    config = msg.content["config"]
    clients, _ = federation(int(context.node_config["num-partitions"]), str(config["partition"]))
    return clients[int(context.node_config["partition-id"])]


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of SGD from the received global model."""
    torch.set_num_threads(1)
    config = msg.content["config"]
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    (x, y), _ = client_data(msg, context)
    loader = DataLoader(TensorDataset(x, y), batch_size=int(config["batch-size"]), shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]),
                                momentum=float(config["momentum"]))  # fmt: skip
    model.train()
    total = 0.0
    for bx, by in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(bx), by)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(by)
    metrics = MetricRecord({"train_loss": total / len(y), "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The received global model on this client's local test split."""
    torch.set_num_threads(1)
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, data = client_data(msg, context)
    loss, accuracy = test_fn(model, data) if len(data[1]) else (0.0, 0.0)
    metrics = {"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(data[1])}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


def server_app(args: argparse.Namespace, result: dict) -> ServerApp:
    """The ServerApp for ``args``; the final metrics land in ``result`` (run_simulation
    returns nothing)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        torch.set_num_threads(1)
        # The simulated nodes register after the ServerApp starts, and FedAvg sizes a round's
        # sample from the nodes registered so far: wait for all of them (see the guide).
        while len(list(grid.get_node_ids())) < args.clients:
            time.sleep(0.1)
        _, central = federation(args.clients, args.partition)

        def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            model = make_model()
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, accuracy = test_fn(model, central)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        seed = np.random.SeedSequence([SEED, 0]).generate_state(2, np.uint64)[0] >> 1
        torch.manual_seed(int(seed))  # fedlab's seed_for(0, 0): fedlab's initial global model
        strategy = FedAvg(
            fraction_train=args.per_round / args.clients,
            min_train_nodes=args.per_round,  # exactly per_round, whatever the float rounding
            fraction_evaluate=1.0,
            min_available_nodes=args.clients,
        )
        config = ConfigRecord({"lr": 0.1, "momentum": 0.9, "batch-size": 32,
                               "partition": args.partition})  # fmt: skip
        out = strategy.start(grid=grid, initial_arrays=ArrayRecord(make_model().state_dict()),
                             num_rounds=args.rounds, train_config=config,
                             evaluate_config=config, evaluate_fn=global_evaluate)  # fmt: skip
        result.update(out.evaluate_metrics_serverapp[args.rounds])

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--partition", choices=("iid", "dirichlet"), default="iid")
    args = parser.parse_args()
    if not 1 <= args.per_round <= args.clients or args.rounds < 1:
        parser.error("needs 1 <= --per-round <= --clients and --rounds >= 1")
    try:  # the split, before Ray starts: Dirichlet cannot give 100 clients 10 rows each
        federation(args.clients, args.partition)
    except ValueError as err:
        parser.error(f"--partition {args.partition} with --clients {args.clients}: {err}")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no network from the benchmark
    result: dict = {}
    resources = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
    run_simulation(server_app(args, result), app, args.clients, backend_config=resources)
    seconds = time.time() - psutil.Process().create_time()
    print(f"flower_peer: accuracy {result['accuracy']:.4f} seconds {seconds:.1f}", flush=True)


if __name__ == "__main__":
    # Run as a script, this file is `__main__`, which cloudpickle would ship by value with
    # every message (and its data cache empty). Importing it as `flower_peer` (Flower puts the
    # driver's sys.path on the actors' PYTHONPATH) lets the actors import it once, as they
    # import a Flower app's module.
    import flower_peer

    flower_peer.main()
