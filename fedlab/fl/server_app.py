"""The ServerApp: connect to the clients, run the Flower strategy, record every round."""

from __future__ import annotations

import time
from logging import getLogger
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedlab.record import checkpoint
from fedlab.trackers.carbon import RunCarbon
from fedlab.trackers.devices import DeviceLedger
from fedlab.config.experiment import Experiment
from fedlab.fl.grid import FedlabGrid, RoundTally
from fedlab.fl.model import build_model
from fedlab.data.partition import FederatedData
from fedlab.trackers.privacy import PrivacyLedger, central_dp_strategy
from fedlab.record.run_dir import RunRecord
from fedlab.fl.strategy import build_strategy
from fedlab.fl.training import evaluate, seed_for

log = getLogger("fedlab")


class RoundCloser:
    """Flower's ``evaluate_fn``: called once before round 1 and after every round.

    It evaluates the global model on the central test split, writes the round's row and its
    clients' rows to the record, prints the progress line, and checkpoints the run. In a
    resumed run Flower counts rounds from 0 again: ``offset`` (the checkpoint's round) turns
    its count into the run's, and the re-evaluation of the checkpointed model is not
    recorded twice.
    """

    def __init__(
        self,
        exp: Experiment,
        fed: FederatedData,
        grid: FedlabGrid,
        record: RunRecord,
        privacy: PrivacyLedger | None,
        carbon: RunCarbon | None,
        strategy: Any,
        offset: int = 0,
        devices: DeviceLedger | None = None,
    ) -> None:
        self.exp, self.fed, self.grid, self.record = exp, fed, grid, record
        self.privacy, self.carbon, self.strategy = privacy, carbon, strategy
        self.devices = devices
        self.offset = offset
        self.model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
        self.started = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(self.model, self.fed.test)
        if self.offset and server_round == 0:  # the checkpointed model, already recorded
            if self.carbon is not None:
                self.carbon.start_round(self.offset + 1)
            return MetricRecord({"loss": loss, "accuracy": accuracy})
        server_round += self.offset
        tally = self.grid.tally if server_round > 0 else None
        row = round_row(server_round, loss, accuracy, tally, time.perf_counter() - self.started)
        extra: dict = {}
        if self.privacy is not None:
            per_client = self.privacy.after_round(tally.rows) if tally else {}
            for client_row in tally.rows if tally else []:
                if client_row["phase"] == "train" and client_row["client"] in per_client:
                    client_row["epsilon"] = per_client[client_row["client"]]
            row["epsilon"] = self.privacy.epsilon if tally else 0.0
            extra["privacy"] = self.privacy.summary()
        scheduler = self.grid.scheduler
        if self.devices is not None and tally:
            columns = self.devices.record_round(
                server_round,
                tally.rows,
                scheduler.round_start_s(server_round),
                scheduler.phases_s(server_round),
                len(tally.plan.missed_deadline),
            )
            row.update({k: v for k, v in columns.items() if k in DEVICE_ROUND_COLUMNS})
            extra["devices"] = self.devices.summary()
        if self.carbon is not None:
            if tally:
                columns, per_client = self.carbon.end_round(
                    server_round, tally.rows, scheduler.round_start_s(server_round)
                )
                row.update(columns)
                for client_row in tally.rows:  # each client's share, on its first row
                    client_row.update(per_client.pop(client_row["client"], {}))
                extra["carbon"] = self.carbon.summary()
            if server_round < self.exp.cfg.num_rounds:
                self.carbon.start_round(server_round + 1)
        self.record.add_round(row, tally.rows if tally else [])
        totals = {
            k: sum(r.get(k) or 0 for r in self.record.rounds) for k in ("bytes_down", "bytes_up")
        }
        self.record.update(
            rounds_completed=server_round,
            accuracy=accuracy,
            loss=loss,
            federated_accuracy=row["federated_accuracy"],
            federated_loss=row["federated_loss"],
            communication={"bytes_down": totals["bytes_down"], "bytes_up": totals["bytes_up"]},
            **extra,
        )
        minimum = self.exp.cfg.strategy.min_train_clients
        if tally and row["clients_succeeded"] < minimum:
            log.warning(
                "fedlab: round %d: %d of %d clients succeeded, below strategy.min_train_clients"
                "=%d%s (see clients.csv for why)",
                server_round,
                row["clients_succeeded"],
                row["clients_trained"],
                minimum,
                "; the global model was not updated" if not row["clients_succeeded"] else "",
            )
        if tally:
            checkpoint.save(
                self.record.dir,
                server_round,
                arrays,
                self.strategy,
                {
                    "privacy": self.privacy.state_dict() if self.privacy else None,
                    "carbon": self.carbon.state_dict() if self.carbon else None,
                    "devices": self.devices.state_dict() if self.devices else None,
                },
            )
        clients = (
            f"{row['clients_succeeded']}/{row['clients_trained']} trained"
            if tally
            else "initial model"
        )
        if self.privacy is not None and tally:
            clients += f" | eps {self.privacy.epsilon:.3g}"
        if self.devices is not None and tally:
            clients += f" | edge {row['sim_start_s'] + row['sim_duration_s']:.1f} s sim"
        log.info(
            "round %3d/%d | acc %.4f | loss %.4f | fed acc %s | %s | %.1f s",
            server_round,
            self.exp.cfg.num_rounds,
            accuracy,
            loss,
            _fmt(row["federated_accuracy"]),
            clients,
            row["elapsed_s"],
        )
        return MetricRecord({"loss": loss, "accuracy": accuracy})


#: The device ledger's round columns that go into ``rounds.csv``.
DEVICE_ROUND_COLUMNS = (
    "sim_start_s",
    "sim_duration_s",
    "clients_missed_deadline",
    "edge_kwh",
    "edge_kg",
)


def round_row(
    server_round: int, loss: float, accuracy: float, tally: RoundTally | None, elapsed: float
) -> dict:
    """One row of ``rounds.csv``."""
    row = {
        "round": server_round,
        "central_loss": loss,
        "central_accuracy": accuracy,
        "elapsed_s": round(elapsed, 3),
    }
    if tally is None:
        return row | {"federated_loss": None, "federated_accuracy": None}
    plan = tally.plan
    return row | {
        "federated_loss": tally.weighted("evaluate", "loss"),
        "federated_accuracy": tally.weighted("evaluate", "accuracy"),
        "train_loss": tally.weighted("train", "train_loss"),
        "clients_sampled": len(plan.sampled),
        "clients_trained": len(plan.epochs),
        "clients_succeeded": tally.count("train", "ok"),
        "clients_failed": tally.count("train", "failed"),
        "clients_straggled": len(plan.stragglers),
        "clients_dropped": len(plan.dropped),
        "clients_evaluated": tally.count("evaluate", "ok"),
        "bytes_down": int(
            tally.total("train", "bytes_down") + tally.total("evaluate", "bytes_down")
        ),
        "bytes_up": int(tally.total("train", "bytes_up") + tally.total("evaluate", "bytes_up")),
        "duration_s": round(time.perf_counter() - tally.started, 3),
    }


def _fmt(value: float | None) -> str:
    return "  -   " if value is None else f"{value:.4f}"


def run_server(
    grid: Grid,
    exp: Experiment,
    fed: FederatedData,
    record: RunRecord,
    carbon: RunCarbon | None = None,
    saved: checkpoint.Checkpoint | None = None,
) -> None:
    """Run ``exp``'s strategy over ``grid`` and write ``record`` (the ServerApp's body).

    With ``saved``, continue after the checkpointed round with every piece of state restored.
    """
    cfg = exp.cfg
    if hasattr(grid, "pull_interval"):  # Flower's in-memory Grid (simulation)
        grid.pull_interval = cfg.simulation.pull_interval_s
    fedlab_grid = FedlabGrid(grid, exp.scheduler(fed))
    fedlab_grid.connect(cfg.num_clients, cfg.simulation.connect_timeout_s)
    torch.manual_seed(seed_for(cfg.seed, 0))  # the initial global model
    model = build_model(cfg.model, fed.input_shape, fed.num_classes)
    initial = ArrayRecord(model.state_dict())
    strategy = build_strategy(cfg.strategy)
    privacy = None
    if cfg.privacy.mode != "none":
        per_round = exp.scheduler().trained_per_round()
        privacy = PrivacyLedger(cfg.privacy, cfg.num_clients, per_round)
        if cfg.privacy.mode == "central":
            strategy, _ = central_dp_strategy(strategy, cfg.privacy, per_round, cfg.num_clients)
            privacy.flower_strategy = strategy
    devices = None
    if cfg.devices.enabled:
        devices = DeviceLedger(exp.fleet(fed), exp.grid_intensity(), cfg.devices.count_idle)
    done = 0
    if saved is not None:
        done = saved.server_round
        initial = ArrayRecord(saved.model)
        checkpoint.restore_strategy(strategy, saved.strategy, saved.layout)
        scheduled = getattr(strategy, "strategy", strategy)  # inside a DP wrapper, if any
        scheduled.round_offset = done
        if privacy is not None:
            privacy.load_state_dict(saved.state["privacy"])
        if devices is not None:
            devices.load_state_dict(saved.state["devices"])
    result = strategy.start(
        grid=fedlab_grid,
        initial_arrays=initial,
        num_rounds=cfg.num_rounds - done,
        timeout=cfg.simulation.round_timeout_s,
        train_config=exp.train_config(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=RoundCloser(
            exp, fed, fedlab_grid, record, privacy, carbon, strategy, done, devices
        ),
    )
    final = result.arrays if len(result.arrays) else initial
    record.save_model(final.to_torch_state_dict())


def build_server_app(
    exp: Experiment,
    fed: FederatedData,
    record: RunRecord,
    carbon: RunCarbon | None,
    saved: checkpoint.Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp running ``exp``'s strategy and writing ``record``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, exp, fed, record, carbon, saved)

    return app
