"""The ServerApp: connect to the clients, run the Flower strategy, record every round.

Everything a run measures beyond the model's own metrics (epsilon, energy, device time, and
whatever a user adds) is a tracker (:mod:`fedlab.trackers.base`): this module only loops over
them, so adding one never edits it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import getLogger
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedlab.config.clock import format_utc
from fedlab.config.experiment import Experiment
from fedlab.console import round_line
from fedlab.data.partition import FederatedData
from fedlab.fl.clock import clock_summary
from fedlab.fl.evaluation import personalized_section
from fedlab.fl.grid import FedlabGrid, RoundTally
from fedlab.fl.model import build_model, state_dict_of
from fedlab.fl.strategy import build_strategy
from fedlab.fl.training import evaluate, seed_for
from fedlab.record import checkpoint
from fedlab.record.run_dir import RunRecord
from fedlab.trackers.base import RoundContext, StopRun
from fedlab.trackers.registry import Trackers

log = getLogger("fedlab")


class RoundCloser:
    """Flower's ``evaluate_fn``: called once before round 1 and after every round.

    It evaluates the global model on the central test split, lets every tracker close the
    round, writes the round's row and its clients' rows to the record, prints the progress
    line, and checkpoints the run. In a resumed run Flower counts rounds from 0 again:
    ``offset`` (the checkpoint's round) turns its count into the run's, and the
    re-evaluation of the checkpointed model is not recorded twice.
    """

    def __init__(
        self,
        exp: Experiment,
        fed: FederatedData,
        grid: FedlabGrid,
        record: RunRecord,
        trackers: Trackers,
        strategy: Any,
        offset: int = 0,
    ) -> None:
        self.exp, self.fed, self.grid, self.record = exp, fed, grid, record
        self.trackers, self.strategy = trackers, strategy
        self.offset = offset
        self.model = build_model(exp.cfg.model, fed.input_shape, fed.num_classes)
        self.started = time.perf_counter()

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        self.model.load_state_dict(state_dict_of(arrays))
        loss, accuracy = evaluate(self.model, self.fed.test)
        metrics = MetricRecord({"loss": loss, "accuracy": accuracy})
        if self.offset and server_round == 0:  # the checkpointed model, already recorded
            self.trackers.start_round(self.offset + 1)
            return metrics
        server_round += self.offset
        tally = self.grid.tally if server_round > 0 else None
        row = round_row(server_round, loss, accuracy, tally, time.perf_counter() - self.started)
        if tally is not None:
            row.update(clock_columns(self.grid.scheduler, server_round, self.exp.cfg.clock))
        stop: StopRun | None = None
        if tally is None:
            for tracker in self.trackers:
                row.update(tracker.initial_columns())
        else:
            try:
                self.trackers.end_round(
                    RoundContext(server_round, tally, self.grid.scheduler, row, arrays)
                )
            except StopRun as err:  # the round happened: record it, then stop
                stop = err
        self.record.add_round(row, tally.rows if tally else [])
        sections = self.trackers.sections()
        self.record.update(
            rounds_completed=server_round,
            accuracy=accuracy,
            loss=loss,
            federated_accuracy=row["federated_accuracy"],
            federated_loss=row["federated_loss"],
            **(
                {"personalized_accuracy": personalized_section(tally.rows, server_round)}
                if tally is not None and tally.count("evaluate", "ok")
                else {}
            ),
            clock=clock_summary(self.exp.cfg, self.grid.scheduler, self.record.rounds),
            communication={
                key: sum(r.get(key) or 0 for r in self.record.rounds)
                for key in ("bytes_down", "bytes_up")
            },
            **sections,
            warnings=gathered_warnings(self.record.results.get("warnings") or [], sections),
        )
        if tally is None:
            # Process start to the first round's start: the imports, data, Ray and actors
            # that duration_s (measured from the record's opening) leaves out.
            self.record.update(startup_s=round(time.time() - process_started(), 3))
            log.info(round_line(row, self.exp.cfg.num_rounds, ["initial model"]))
        else:
            self._warn_below_minimum(row)
            state = self.trackers.state_dict()
            checkpoint.save(self.record.dir, server_round, arrays, self.strategy, state)
            trained = f"{row['clients_succeeded']}/{row['clients_trained']} trained"
            parts = [trained, *self.trackers.console(row)]
            log.info(round_line(row, self.exp.cfg.num_rounds, parts))
        if stop is None and server_round < self.exp.cfg.num_rounds:
            try:
                self.trackers.start_round(server_round + 1)
            except StopRun as err:  # before the next round trains
                stop = err
        if stop is not None:
            self.record.update(
                stopped={"status": stop.status, "reason": stop.reason, "round": server_round}
            )
            raise stop
        return metrics

    def _warn_below_minimum(self, row: dict[str, Any]) -> None:
        minimum = self.exp.cfg.strategy.min_train_clients
        if row["clients_succeeded"] < minimum:
            log.warning(
                "fedlab: round %d: %d of %d clients succeeded, below strategy.min_train_clients"
                "=%d%s (see clients.csv for why)",
                row["round"],
                row["clients_succeeded"],
                row["clients_trained"],
                minimum,
                "; the global model was not updated" if not row["clients_succeeded"] else "",
            )


def gathered_warnings(current: list[str], sections: dict[str, Any]) -> list[str]:
    """``results.json``'s ``warnings``: those already there (data preparation's) and every
    tracker section's own ``warnings`` list, each once, in order."""
    found = [
        text for section in sections.values() if isinstance(section, dict)
        for text in section.get("warnings") or []
    ]
    return list(dict.fromkeys([*current, *found]))


def examples_of(fed: FederatedData) -> Callable[[int, str], int]:
    """(partition id, phase) -> how many examples that client's train or evaluate phase goes
    through, which the Grid sends the longest of first."""
    return lambda pid, phase: len((fed.client_train if phase == "train" else fed.client_test)[pid])


def process_started() -> float:
    """When this process started (seconds since the epoch), as the OS records it."""
    import psutil

    return psutil.Process().create_time()


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
        return row | {
            "federated_loss": None, "federated_accuracy": None, "personalized_accuracy": None
        }
    plan = tally.plan
    return row | {
        "federated_loss": tally.weighted("evaluate", "loss"),
        "federated_accuracy": tally.weighted("evaluate", "accuracy"),
        "personalized_accuracy": tally.weighted("evaluate", "personal_accuracy"),
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



def clock_columns(scheduler: Any, server_round: int, clock: Any) -> dict[str, Any]:
    """A round's place on the simulated clock: its UTC start and end (a dated clock only) and
    how long it waited after the previous round (a temporal policy, availability)."""
    when = scheduler.round_time(server_round)
    start = clock.start_epoch
    return {
        "sim_start_utc": None if start is None else format_utc(start + when.start_s),
        "sim_end_utc": None if start is None else format_utc(start + when.end_s),
        "wait_s": when.wait_s,
    }


def run_server(
    grid: Grid,
    exp: Experiment,
    fed: FederatedData,
    record: RunRecord,
    trackers: Trackers,
    saved: checkpoint.Checkpoint | None = None,
) -> None:
    """Run ``exp``'s strategy over ``grid`` and write ``record`` (the ServerApp's body).

    With ``saved``, continue after the checkpointed round with every piece of state restored.
    """
    cfg = exp.cfg
    if hasattr(grid, "pull_interval"):  # Flower's in-memory Grid (simulation)
        grid.pull_interval = cfg.simulation.pull_interval_s
    fedlab_grid = FedlabGrid(
        grid, exp.scheduler(fed), trackers.reply_metrics, examples=examples_of(fed)
    )
    fedlab_grid.connect(cfg.num_clients, cfg.simulation.connect_timeout_s)
    torch.manual_seed(seed_for(cfg.seed, 0))  # the initial global model
    model = build_model(cfg.model, fed.input_shape, fed.num_classes)
    initial = ArrayRecord(model.state_dict())
    strategy = trackers.wrap_strategy(build_strategy(cfg.strategy))
    done = 0
    if saved is not None:
        done = saved.server_round
        initial = ArrayRecord(saved.model)
        checkpoint.restore_strategy(strategy, saved.strategy, saved.layout)
        scheduled = getattr(strategy, "strategy", strategy)  # inside a DP wrapper, if any
        scheduled.round_offset = done
        trackers.load_state_dict(saved.state)
    result = strategy.start(
        grid=fedlab_grid,
        initial_arrays=initial,
        num_rounds=cfg.num_rounds - done,
        timeout=cfg.simulation.round_timeout_s,
        train_config=exp.train_config(trackers.train_config()),
        # the training settings too: a client that personalizes by fine-tuning needs them
        evaluate_config=exp.train_config(),
        evaluate_fn=RoundCloser(exp, fed, fedlab_grid, record, trackers, strategy, done),
    )
    final = result.arrays if len(result.arrays) else initial
    record.save_model(final.to_torch_state_dict())


def build_server_app(
    exp: Experiment,
    fed: FederatedData,
    record: RunRecord,
    trackers: Trackers,
    saved: checkpoint.Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp running ``exp``'s strategy and writing ``record``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, exp, fed, record, trackers, saved)

    return app
