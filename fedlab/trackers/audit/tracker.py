"""The audit tracker: drift per round, and a fairness audit and explanations of the final model.

Always on (``trackers.audit`` in ``conf/config.yaml``), with options there:

* ``drift`` (true): per round, each client's ``update_distance`` from the aggregate and the
  round's ``label_shift_tv`` (:mod:`fedlab.trackers.audit.drift`);
* ``fairness`` (true): Fairlearn's ``MetricFrame`` over the clients' test splits by client,
  label-skew group, size group, region and device (:mod:`fedlab.trackers.audit.fairness`);
* ``explanations`` (true): Captum's Integrated Gradients per class on the server's test split
  and per client (:mod:`fedlab.trackers.audit.explain`), with ``ig_steps`` (32),
  ``max_examples`` (200 server examples), ``client_examples`` (50 per client),
  ``max_clients`` (20 clients explained), ``baseline`` (``zeros`` or ``mean``).

The final model is the last round's global model (``ctx.arrays``, the same weights the run
saves as ``model.safetensors``); a run resumed with no round left falls back to that file,
and one without either records why the audit was skipped. The audit runs in :meth:`close`,
whatever the run's status: a failed or diverged run is audited at its last round, which the
section names. Everything is bounded (examples, clients, steps): on the default digits run
(10 clients) the audit adds 0.6-2 s at the end (fairness 0.2-0.6 s, IG 0.3-0.9 s, the picture
0.5-0.7 s, measured on a busy 2-core machine) and about 10 ms per round for the drift. It runs
with ``simulation.torch_threads`` intra-op threads, as the clients do. A failure of the audit
itself is recorded (``error``) and warned about, never a failed run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from logging import getLogger
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedlab.config.schema import ConfigError
from fedlab.trackers.audit.drift import (
    DriftLedger,
    flat_arrays,
    label_histogram,
    model_record,
    update_distance,
)
from fedlab.trackers.base import RoundContext, RunContext, Tracker

if TYPE_CHECKING:
    import torch

    from fedlab.config.experiment import Experiment
    from fedlab.data.partition import FederatedData

log = getLogger("fedlab")

#: Option -> (default, check, what is allowed): checked before anything is written.
OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "drift": (True, lambda v: isinstance(v, bool), "true or false"),
    "fairness": (True, lambda v: isinstance(v, bool), "true or false"),
    "explanations": (True, lambda v: isinstance(v, bool), "true or false"),
    "ig_steps": (32, lambda v: _is_int(v) and 1 <= v <= 1000, "an integer in 1..1000"),
    "max_examples": (200, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "client_examples": (50, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_clients": (20, lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "baseline": ("zeros", lambda v: v in ("zeros", "mean"), "zeros or mean"),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AuditTracker(Tracker):
    """Drift, fairness and explanations (module docstring)."""

    name: ClassVar[str] = "audit"
    round_columns: ClassVar[tuple[str, ...]] = (
        "update_distance_mean",
        "update_distance_max",
        "label_shift_tv",
    )
    client_columns: ClassVar[tuple[str, ...]] = ("update_distance",)
    report_module: ClassVar[str] = "fedlab.trackers.audit.report"
    #: The audit of the final model (Fairlearn, Captum: ~1 s of imports, 0.5-2 s of compute)
    #: runs in a child (forked as the rounds start where a core is idle, else at the close)
    #: while the driver closes the rest and draws the pictures.
    closes_apart: ClassVar[bool] = True

    def __init__(
        self,
        exp: Experiment,
        fed: FederatedData,
        run_dir: Path,
        drift: bool = True,
        fairness: bool = True,
        explanations: bool = True,
        ig_steps: int = 32,
        max_examples: int = 200,
        client_examples: int = 50,
        max_clients: int = 20,
        baseline: str = "zeros",
    ) -> None:
        self.exp, self.fed, self.run_dir = exp, fed, run_dir
        self.drift, self.fairness, self.explanations = drift, fairness, explanations
        self.ig_steps, self.max_examples = ig_steps, max_examples
        self.client_examples, self.max_clients, self.baseline = (
            client_examples, max_clients, baseline
        )
        self.ledger = DriftLedger()
        # a client's training labels per class, counted when it first trains: a lazy
        # federation (fedlab.data.partition.LazyFederatedData) generates only those clients
        self.label_counts: dict[int, np.ndarray] = {}
        self.last: tuple[int, Any] | None = None  # (round, the global ArrayRecord)

    @classmethod
    def check(cls, exp: Experiment) -> None:
        """Every option's value, and the clients' placement the fairness groups read (checked
        here too because ``carbon=off`` skips the carbon tracker's own check)."""
        options = dict(exp.cfg.trackers.get(cls.name) or {})
        options.pop("_target_", None)
        for key, value in options.items():
            if key not in OPTIONS:
                raise ConfigError(
                    f"trackers.{cls.name}.{key}",
                    f"unknown option; allowed: {', '.join(sorted(OPTIONS))}",
                )
            _, ok, allowed = OPTIONS[key]
            if not ok(value):
                raise ConfigError(f"trackers.{cls.name}.{key}", f"must be {allowed}, got {value!r}")
        if options.get("fairness", True) and exp.cfg.carbon.regions is not None:
            from fedlab.trackers.carbon.intensity import assign_regions

            assign_regions(exp.cfg.num_clients, exp.cfg.carbon.regions, exp.cfg.seed)

    @classmethod
    def imports(cls, exp: Experiment) -> tuple[str, ...]:
        """Fairlearn (with the SciPy and scikit-learn it imports, in steps: ~0.9 s) and Captum
        (~0.25 s), which the audit of the final model imports at the run's close, where each
        is on."""
        options = dict(exp.cfg.trackers.get(cls.name) or {})
        fairness = ("scipy.sparse", "scipy.stats", "sklearn.utils", "fairlearn.metrics")
        return (
            *(fairness if options.get("fairness", True) else ()),
            *(("captum.attr",) if options.get("explanations", True) else ()),
        )

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> AuditTracker:
        return cls(run.exp, run.fed, run.run_dir, **options)

    # -- drift, per round -------------------------------------------------------------------

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        if ctx.arrays is not None:
            self.last = (ctx.server_round, ctx.arrays)
        if not self.drift:
            return {}
        distances: dict[int, float] = {}
        if ctx.arrays is not None:
            aggregate = flat_arrays(ctx.arrays)
            for pid, records in ctx.tally.updates.items():
                record = model_record(records)
                if record is not None:
                    distances[pid] = update_distance(flat_arrays(record), aggregate)
            for row in ctx.tally.rows:
                d = distances.get(row["client"])
                if row["phase"] == "train" and row["status"] == "ok" and d is not None:
                    row["update_distance"] = d if math.isfinite(d) else None
        histogram = None
        if self.fed is not None:
            for pid in ctx.tally.updates:
                if pid not in self.label_counts:
                    labels = self.fed.client(pid)[0].y
                    self.label_counts[pid] = np.bincount(labels, minlength=self.fed.num_classes)
            histogram = label_histogram(self.label_counts, ctx.tally.updates)
        return self.ledger.end_round(ctx.server_round, distances, histogram)

    def state_dict(self) -> dict[str, Any]:
        return {"drift": self.ledger.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ledger.load_state_dict(state["drift"])

    def closing_state(self) -> dict[str, Any]:
        """The drift so far and the final global model (what :meth:`close` reads)."""
        return {**self.state_dict(), "last": self.last}

    def restore_closing_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state)
        self.last = state["last"]

    # -- the final model ---------------------------------------------------------------------

    def _final_model(self) -> tuple[torch.nn.Module | None, str]:
        """The model to audit and which it is; (None, why) when there is none."""
        import torch

        from fedlab.fl.model import build_model
        from fedlab.record.run_dir import load_model

        if self.last is not None:
            state = self.last[1].to_torch_state_dict()
            what = f"global model of round {self.last[0]}"
        elif (self.run_dir / "model.safetensors").is_file():
            state, what = load_model(self.run_dir / "model.safetensors"), "model.safetensors"
        else:
            return None, "no global model: the run ended before its first round"
        cfg = self.exp.cfg
        with torch.random.fork_rng():  # building draws initial weights: leave the RNG alone
            model = build_model(cfg.model, self.fed.input_shape, self.fed.num_classes)
        model.load_state_dict(state)
        return model, what

    def summary(self) -> dict[str, Any]:
        return {"drift": self.ledger.summary() if self.drift else None}

    def close(self) -> dict[str, Any]:
        """Audit the final model (fairness, explanations) and return the whole section."""
        section: dict[str, Any] = self.summary()
        if not (self.fairness or self.explanations):
            return section
        import torch

        started = time.perf_counter()
        # The clients' thread count (simulation.torch_threads): on a busy 2-core machine two
        # intra-op threads made Integrated Gradients 5x slower than one (tiny tensors).
        threads = torch.get_num_threads()
        torch.set_num_threads(self.exp.cfg.simulation.torch_threads)
        try:
            self._audit(section)
        except Exception as err:  # a post-hoc audit must not cost the run its record
            text = f"audit of the final model failed: {type(err).__name__}: {err}".splitlines()[0]
            log.warning("fedlab: warning: %s", text)
            section["error"] = text
        finally:
            torch.set_num_threads(threads)
        section["audit_s"] = round(time.perf_counter() - started, 3)
        return section

    def _audit(self, section: dict[str, Any]) -> None:
        """Fill ``section`` with the final model's fairness audit and explanations."""
        model, what = self._final_model()
        section["model"] = what
        off = "trackers.audit.{} is false"
        if model is None:
            section["fairness"] = section["explanations"] = {"skipped": what}
            return
        if self.fairness:
            from fedlab.trackers.audit.fairness import fairness_audit

            section["fairness"] = fairness_audit(self.exp, self.fed, model)
        else:
            section["fairness"] = {"skipped": off.format("fairness")}
        section["explanations"] = self._explain(model) if self.explanations else {
            "skipped": off.format("explanations")
        }

    def _explain(self, model: torch.nn.Module) -> dict[str, Any]:
        from fedlab.trackers.audit.explain import explain, skip_reason

        reason = skip_reason(model)
        if reason:
            return {"skipped": reason}
        result = explain(
            model,
            self.fed,
            steps=self.ig_steps,
            max_examples=self.max_examples,
            client_examples=self.client_examples,
            max_clients=self.max_clients,
            baseline=self.baseline,
            seed=self.exp.cfg.seed,
            run_dir=self.run_dir,
        )
        if "skipped" in result:
            log.warning("fedlab: warning: explanations skipped: %s", result["skipped"])
        return result
