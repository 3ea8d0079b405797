"""The ClientApp: what each simulated (or deployed) client does when the server asks.

Static settings (where the partitioned data lies, which model to build, the run seed) form a
:class:`ClientSpec`. In simulation it is closed over by :func:`build_client_app`, because
``run_simulation`` leaves ``context.run_config`` empty; on Flower's Deployment Engine
(:mod:`fedlab.engines.deployment`) each SuperNode derives it from the run config instead, so
:func:`build_client_app` also accepts a function of the Context. Everything that changes per
round (local epochs, learning rate, FedProx's mu, an injected failure) arrives in the
message's ConfigRecord, as Flower intends.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.data.datasets import ArraySplit
from fedlab.data.partition import FederatedData, load_cached
from fedlab.fl.algorithms.base import ClientUpdate, ExtraLoss, LocalJob
from fedlab.fl.client_state import ClientStateStore
from fedlab.fl.model import build_model, state_dict_of
from fedlab.fl.training import (
    TrainResult,
    evaluate,
    make_optimizer,
    seed_for,
    seed_torch,
    train,
    train_private,
    warm_up,
)

FAIL_KEY = "fedlab-fail"  # set by the server's schedule to inject a client crash


@dataclass(frozen=True)
class ClientSpec:
    """What every client process needs to know about the run (small, so cheap to pickle)."""

    data_path: str
    model: dict[str, Any]
    seed: int
    torch_threads: int = 1
    clipping_mod: str | None = None  # "fixed" | "adaptive": central DP clipped by the clients
    # the algorithm's client side (strategy.client_update: _target_ and options; {}: FedAvg's)
    client_update: dict[str, Any] = field(default_factory=dict)
    state_dir: str | None = None  # where stateful algorithms keep per-client state


class InjectedFailure(RuntimeError):
    """Raised by a client the failure schedule (``failures.rate``) chose for this round."""


@cache
def _set_threads(threads: int) -> None:
    # Several client actors share the cores; one intra-op thread each avoids oversubscription
    # and makes results independent of how many actors run at once.
    torch.set_num_threads(threads)


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


@cache
def _template(model_json: str, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    # Building through Hydra's instantiate costs about 1.3 ms; a copy of a built one 0.2 ms.
    return build_model(json.loads(model_json), input_shape, num_classes)


@cache
def _reader(model_json: str, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    # Evaluation only reads the module it is given (``personalize`` copies it before changing
    # anything), so one module per process serves every evaluation message, each replacing
    # all its parameters and persistent buffers: the copy it saves is ~0.2 ms of a small
    # client's ~1 ms evaluation (issue #22).
    return copy.deepcopy(_template(model_json, input_shape, num_classes))


def _model(
    spec: ClientSpec, fed: FederatedData, arrays: ArrayRecord, *, to_train: bool = True
) -> torch.nn.Module:
    """The global model from the message: in a fresh module to train (a copy of one built per
    process, its weights all replaced, so training never shares a module between clients), or
    in this process's one evaluation module."""
    key = (json.dumps(spec.model, sort_keys=True), tuple(fed.input_shape), fed.num_classes)
    if to_train:
        model = copy.deepcopy(_template(*key))
        model.load_state_dict(state_dict_of(arrays))
        return model
    model = _reader(*key)
    # The evaluation module still holds these weights when the message carries the same bytes
    # as the last one it loaded (every client of a round is sent the same global model):
    # comparing them costs ~2 µs, loading them again ~120 µs of a small client's ~1 ms.
    loaded = [array.data for array in arrays.values()]
    if _LOADED.get(key) != loaded:
        model.load_state_dict(state_dict_of(arrays))
        _LOADED[key] = loaded
    return model


#: The bytes of the arrays each evaluation module (:func:`_reader`) last loaded.
_LOADED: dict[tuple[Any, ...], list[bytes]] = {}


def _head(data: ArraySplit, n: int) -> ArraySplit:
    """The first ``n`` examples (a warm-up batch)."""
    return ArraySplit(data.x[:n], data.y[:n])


def _warmup_key(spec: ClientSpec, config: ConfigRecord) -> tuple[Any, ...]:
    """What a warm-up step must match to warm the real one up: the model, the optimizer,
    DP-SGD's per-sample gradient mode and whether FedProx's term is on."""
    return (
        "train",
        json.dumps(spec.model, sort_keys=True),
        str(config["optimizer"]),
        str(config["dp-grad-sample-mode"]) if "dp-noise-multiplier" in config else None,
        float(config.get("proximal-mu", 0.0)) > 0,
    )


def _fit(
    model: torch.nn.Module,
    data: ArraySplit,
    config: ConfigRecord,
    epochs: float,
    seed: int,
    extra_loss: ExtraLoss | None = None,
    params: list[torch.nn.Parameter] | None = None,
) -> tuple[TrainResult, dict[str, float | int]]:
    """Local training as the message's config asks (plain SGD/Adam or DP-SGD, FedProx's
    term, an algorithm's ``extra_loss`` on its trainable ``params``), with its DP report's
    metrics (empty without DP-SGD)."""
    optimizer = make_optimizer(
        iter(params) if params is not None else model.parameters(),
        str(config["optimizer"]),
        float(config["lr"]),
        float(config["momentum"]),
        float(config["weight-decay"]),
    )
    common = {
        "epochs": epochs,
        "batch_size": int(config["batch-size"]),
        "optimizer": optimizer,
        "proximal_mu": float(config.get("proximal-mu", 0.0)),
    }
    if "dp-noise-multiplier" not in config:
        generator = torch.Generator().manual_seed(seed)
        return train(model, data, generator=generator, extra_loss=extra_loss, **common), {}
    # start-up refuses DP-SGD for client updates that add terms (ClientUpdate.privacy_modes)
    assert extra_loss is None and params is None, "DP-SGD with an algorithm's own terms"
    result, report = train_private(  # privacy=local: DP-SGD
        model,
        data,
        seed=seed,
        noise_multiplier=float(config["dp-noise-multiplier"]),
        max_grad_norm=float(config["dp-max-grad-norm"]),
        grad_sample_mode=str(config["dp-grad-sample-mode"]),
        **common,
    )
    return result, report.as_metrics()


@cache
def _client_update(target_json: str) -> ClientUpdate:
    """The configured client update (one per process: updates hold only hyperparameters)."""
    target = json.loads(target_json)
    if not target:
        return ClientUpdate()
    from hydra.utils import instantiate

    return instantiate(target)


def client_update_of(spec: ClientSpec) -> ClientUpdate:
    return _client_update(json.dumps(spec.client_update, sort_keys=True))


class _Fit:
    """:class:`fedlab.fl.algorithms.base.Fit` for one client's round: every pass seeded by
    (run seed, round, client, stream); the main pass's DP-SGD report kept for the reply."""

    def __init__(self, spec: ClientSpec, config: ConfigRecord, pid: int, data: ArraySplit):
        self.spec, self.config, self.pid, self.data = spec, config, pid, data
        self.server_round = int(config["server-round"])
        self.dp_metrics: dict[str, float | int] = {}

    def __call__(
        self,
        model: torch.nn.Module,
        data: ArraySplit | None = None,
        *,
        epochs: float | None = None,
        extra_loss: ExtraLoss | None = None,
        params: list[torch.nn.Parameter] | None = None,
        stream: int = 2,
    ) -> TrainResult:
        epochs = float(self.config["local-epochs"]) if epochs is None else epochs
        seed = seed_for(self.spec.seed, self.server_round, self.pid, stream)
        result, dp = _fit(
            model, data or self.data, self.config, epochs, seed, extra_loss, params
        )
        if stream == 2:
            self.dp_metrics = dp
        return result


def _job(
    spec: ClientSpec, msg: Message, model: torch.nn.Module, data: ArraySplit, pid: int,
    update: ClientUpdate, before_round: int,
) -> LocalJob:
    """The client update's view of this round (its saved state loaded when it keeps one)."""
    config = msg.content["config"]
    state = (
        ClientStateStore(spec.state_dir).load(pid, before_round)
        if update.stateful and spec.state_dir
        else {}
    )
    received = {
        name: state_dict_of(record)
        for name, record in msg.content.array_records.items()
        if name != "arrays"
    }
    fit = _Fit(spec, config, pid, data)
    return LocalJob(model, data, config, received, state, fit, fit.server_round, pid)


def build_client_app(spec: ClientSpec | Callable[[Context], ClientSpec]) -> ClientApp:
    """A ClientApp whose handlers train and evaluate on this node's partition.

    ``spec`` is the run's :class:`ClientSpec` (simulation), or a function that derives it
    from a message's Context (deployment: from ``context.run_config``).
    """
    app = ClientApp()
    spec_of = spec if callable(spec) else lambda _context: spec

    def clipping(msg: Message, context: Context, call_next: Callable) -> Message:
        """Flower's client-side clipping for central DP, when the spec asks for it."""
        kind = spec_of(context).clipping_mod
        if kind is None:
            return call_next(msg, context)
        from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

        mod = fixedclipping_mod if kind == "fixed" else adaptiveclipping_mod
        return mod(msg, context, call_next)

    @app.query()
    def identify(msg: Message, context: Context) -> Message:
        """Tell the server which partition this node holds (node ids are random).

        Deriving the spec here also prepares a deployed node's data before round 1.
        """
        spec_of(context)
        return Message(
            RecordDict({"info": ConfigRecord({"partition-id": _partition_id(context)})}),
            reply_to=msg,
        )

    @app.train(mods=[clipping])
    def train_handler(msg: Message, context: Context) -> Message:
        spec = spec_of(context)
        _set_threads(spec.torch_threads)
        pid = _partition_id(context)
        config = msg.content["config"]
        if config.get(FAIL_KEY, False):
            raise InjectedFailure(f"client {pid}: injected failure (failures.rate)")
        fed = load_cached(spec.data_path)
        data, _ = fed.client(pid)
        model = _model(spec, fed, msg.content["arrays"])
        server_round = int(config["server-round"])
        # The process's one-time warm-up runs on a throwaway copy, before the clocks start;
        # the imports, the data load and the model build above are outside them too.
        batch = _head(data, int(config["batch-size"]))
        warmup_cpu_s = warm_up(
            _warmup_key(spec, config),
            lambda: _fit(copy.deepcopy(model), batch, config, 1.0, spec.seed),
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        seed_torch(seed_for(spec.seed, server_round, pid, 1))
        initial_loss = evaluate(model, data)[0] if config.get("report-initial-loss") else None
        update = client_update_of(spec)
        job = _job(spec, msg, model, data, pid, update, before_round=server_round)
        local = update.train(job)
        if update.stateful and local.state is not None and spec.state_dir:
            ClientStateStore(spec.state_dir).save(pid, server_round, local.state)
        result = local.result
        metrics = {
            # Central DP's accounting needs equal weights: each client is one user.
            "num-examples": 1 if config.get("equal-weights") else len(data),
            "train-examples": len(data),
            "train_loss": result.loss,
            "local-steps": result.steps,
            "local-epochs": float(config["local-epochs"]),
            "partition-id": pid,
            "duration-s": time.perf_counter() - started,
            "cpu-s": time.process_time() - cpu_started,
            "warmup-cpu-s": warmup_cpu_s,
        }
        if initial_loss is not None:
            metrics["initial-loss"] = initial_loss
        metrics.update(local.metrics)
        metrics.update(job.fit.dp_metrics)  # type: ignore[attr-defined]
        records = {name: ArrayRecord(arrays) for name, arrays in local.extra.items()}
        content = RecordDict(
            {"arrays": ArrayRecord(local.arrays), **records, "metrics": MetricRecord(metrics)}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_handler(msg: Message, context: Context) -> Message:
        spec = spec_of(context)
        _set_threads(spec.torch_threads)
        pid = _partition_id(context)
        fed = load_cached(spec.data_path)
        train_data, data = fed.client(pid)
        model = _model(spec, fed, msg.content["arrays"], to_train=False)
        warmup_cpu_s = (
            warm_up(
                ("evaluate", json.dumps(spec.model, sort_keys=True)),
                lambda: evaluate(copy.deepcopy(model), _head(data, 1)),
            )
            if len(data)
            else 0.0
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        loss, accuracy = evaluate(model, data) if len(data) else (0.0, 0.0)
        personal_loss, personal_accuracy = loss, accuracy
        update = client_update_of(spec)
        if len(data) and "server-round" in msg.content["config"]:
            # the model this client would use: its state is the one saved this round
            server_round = int(msg.content["config"]["server-round"])
            job = _job(spec, msg, model, train_data, pid, update, before_round=server_round + 1)
            if (personal := update.personalize(job)) is not None:
                personal_loss, personal_accuracy = evaluate(personal, data)
        metrics = {
            "num-examples": len(data),
            "loss": loss,
            "accuracy": accuracy,
            "personal-loss": personal_loss,
            "personal-accuracy": personal_accuracy,
            "partition-id": pid,
            "duration-s": time.perf_counter() - started,
            "cpu-s": time.process_time() - cpu_started,
            "warmup-cpu-s": warmup_cpu_s,
        }
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app
