"""The divergence guard (fedlab/trackers/divergence): its rule on made-up loss series, and the
README's first example composed with the default client's momentum SGD, which diverges."""

from __future__ import annotations

import math

import pytest

from fedlab.trackers.base import RoundContext, StopRun
from fedlab.trackers.divergence.tracker import DivergenceTracker


def _feed(tracker: DivergenceTracker, losses: list[float]) -> list[int]:
    """Rounds 1.. with these central losses; the rounds at which a warning was added."""
    warned = []
    for r, loss in enumerate(losses, start=1):
        before = len(tracker.warnings)
        tracker.end_round(RoundContext(r, None, None, {"central_loss": loss}))  # type: ignore[arg-type]
        if len(tracker.warnings) > before:
            warned.append(r)
    return warned


def test_growth_for_three_rounds_above_one_and_a_half_times_the_minimum_warns_once() -> None:
    tracker = DivergenceTracker()
    tracker.best, tracker.best_round = 2.0, 0  # round 0's loss
    # 3.1 > 1.5 * 2.0 three times in a row -> round 4; 2.9 resets nothing (not above 3.0)
    assert _feed(tracker, [2.9, 3.1, 3.2, 3.3, 9.0, 12.0]) == [4]
    assert tracker.summary()["diverged"] == {"round": 4, "kind": "growth"}


def test_a_new_minimum_or_a_round_below_the_threshold_resets_the_count() -> None:
    tracker = DivergenceTracker()
    tracker.best, tracker.best_round = 2.0, 0
    assert _feed(tracker, [3.5, 3.5, 2.5, 3.5, 3.5, 1.0, 1.6, 1.6]) == []


def test_nan_stops_the_run_by_default_and_growth_only_when_asked() -> None:
    tracker = DivergenceTracker()
    with pytest.raises(StopRun) as stop:
        _feed(tracker, [2.0, math.nan])
    assert stop.value.status == "diverged" and "round 2" in stop.value.reason
    always = DivergenceTracker(stop_on_divergence="any")
    always.best, always.best_round = 1.0, 0
    with pytest.raises(StopRun):
        _feed(always, [2.0, 2.0, 2.0])
    never = DivergenceTracker(stop_on_divergence="never")
    assert _feed(never, [math.inf]) == [1]


def test_state_survives_a_checkpoint() -> None:
    tracker = DivergenceTracker()
    tracker.best, tracker.best_round = 2.0, 0
    _feed(tracker, [3.5, 3.5])
    again = DivergenceTracker()
    again.load_state_dict(tracker.state_dict())
    assert _feed(again, [3.5]) == [1]  # the third consecutive round, counted across


def test_bad_option_is_one_key(compose_cfg) -> None:
    from fedlab.config.experiment import Experiment
    from fedlab.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"trackers\.divergence\.stop_on_divergence: must be one"):
        Experiment.from_config(compose_cfg("trackers.divergence.stop_on_divergence=sometimes"))


def test_readme_example_with_the_old_client_warns_and_the_recommended_one_trains(
    run_inprocess, compose_cfg
) -> None:
    """``strategy=fedprox dataset=synthetic partition=natural num_clients=30``: with SGD lr 0.1
    and momentum 0.9 (the default client before datasets recommended settings) the loss went
    2.29 -> 94 -> 109 -> 217; now a warning says so. With the dataset's recommendation (the
    FedProx paper's lr 0.01, batch 10) it trains."""
    example = ("strategy=fedprox", "dataset=synthetic", "partition=natural", "num_clients=30",
               "num_rounds=3")
    _, _, old, _ = run_inprocess(*example, "client.lr=0.1", "client.momentum=0.9",
                                 "client.batch_size=32")
    assert old.results["rounds_completed"] == 3  # a warning, not a stop (growth, not NaN)
    assert len(old.results["warnings"]) == 1 and "diverging" in old.results["warnings"][0]
    assert old.results["divergence"]["diverged"] == {"round": 3, "kind": "growth"}
    _, _, new, _ = run_inprocess(*example)
    assert new.results["warnings"] == [] and new.results["divergence"]["diverged"] is None
    losses = [r["central_loss"] for r in new.rounds]
    assert losses == sorted(losses, reverse=True)  # falls every round
    from fedlab.run import recommended_settings

    said = recommended_settings(compose_cfg(*example))["settings"]
    assert said["client.lr"] == {"recommended": 0.01, "used": 0.01, "applied": True}
    overridden = recommended_settings(compose_cfg(*example, "client.lr=0.1"))["settings"]
    assert overridden["client.lr"] == {"recommended": 0.01, "used": 0.1, "applied": False}
