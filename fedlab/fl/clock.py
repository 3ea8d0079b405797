"""The run's dated simulated clock, assembled from the config: the regions the clients' grids
are in, the intensities on those grids (:mod:`fedlab.trackers.carbon.grid`), the temporal
policy and the availability windows the scheduler (:mod:`fedlab.fl.schedule`) places rounds
with, and the intervals of the clock each client's energy is charged over."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedlab.config.schema import FedlabConfig
    from fedlab.fl.schedule import Scheduler
    from fedlab.trackers.carbon.grid import GridIntensity


def client_regions(cfg: FedlabConfig) -> list[str]:
    """Each client's ISO-3 region (``carbon.regions``, else ``carbon.country``)."""
    from fedlab.trackers.carbon.intensity import assign_regions

    return assign_regions(cfg.num_clients, cfg.carbon.regions or cfg.carbon.country, cfg.seed)


def scheduler_options(cfg: FedlabConfig, regions: Any, grid: Any) -> dict[str, Any]:
    """The :class:`~fedlab.fl.schedule.Scheduler`'s clock settings: round duration, start,
    temporal policy and the forecast it minimises, availability windows. ``regions`` and
    ``grid`` are zero-argument callables giving the clients' regions and the
    :class:`GridIntensity`, called only when the clock needs them (a run with
    ``carbon=off`` and an undated clock never reads a region)."""
    clock = cfg.clock
    options: dict[str, Any] = {
        "round_s": clock.round_s,
        "start_epoch": clock.start_epoch,
        "num_rounds": cfg.num_rounds,
    }
    if clock.policy != "immediate":
        from fedlab.fl.shifting import TemporalPolicy

        options["policy"] = TemporalPolicy(
            kind=clock.policy,
            deadline_s=None if clock.deadline_hours is None else clock.deadline_hours * 3600.0,
            interruptible=clock.interruptible,
            threshold=clock.threshold_g_per_kwh,
            horizon_s=clock.max_wait_hours * 3600.0,
        )
        options["signal"] = policy_signal(cfg, regions, grid)
    if clock.availability is not None:
        from fedlab.fl.shifting import Availability

        options["availability"] = Availability.from_config(
            clock.availability, regions(), clock.timezone, cfg.num_clients, cfg.seed
        )
    return options


def policy_signal(cfg: FedlabConfig, regions: Any, grid: Any) -> Any:
    """The forecast a temporal policy minimises (``clock.signal``): the host's grid, or the
    grids of the clients a round would train: the whole population (weighted by clients per
    region) under random selection, and under carbon-aware selection the ones it would pick
    at that time (its uniform fairness draws at the population's mean, the rest from the
    cleanest forecast regions), so deferring and selecting aim at the same clients."""
    if cfg.clock.signal == "host":
        return grid().signal({cfg.carbon.country: 1})
    counts = Counter(regions())
    if cfg.strategy.selection != "carbon_aware":
        return grid().signal(counts)
    import math

    from fedlab.fl.schedule import sample_size

    strategy = cfg.strategy
    k = sample_size(cfg.num_clients, strategy.fraction_train, strategy.min_train_clients)
    fair = math.ceil(strategy.fairness_floor * k)
    return grid().selection_signal(counts, k, fair)


def client_windows(
    clock: Scheduler, server_round: int, rows: list[dict[str, Any]]
) -> dict[int, tuple[float, float]]:
    """The interval of the simulated clock each client of a round drew its energy over: the
    round's phase it took part in (training, or evaluation after it) with simulated devices,
    the whole round without them (whose duration is all one phase). A client in both phases
    is given the span of both."""
    time = clock.round_time(server_round)
    phase = {
        "train": (time.start_s, time.start_s + time.train_s),
        "evaluate": (time.start_s + time.train_s, time.end_s),
    }
    out: dict[int, tuple[float, float]] = {}
    for row in rows:
        a, b = phase.get(row["phase"], (time.start_s, time.end_s))
        if time.evaluate_s == 0.0:
            a, b = time.start_s, time.end_s
        cid = int(row["client"])
        if cid in out:
            a, b = min(a, out[cid][0]), max(b, out[cid][1])
        out[cid] = (a, b)
    return out


def needed_regions(cfg: FedlabConfig, regions: list[str]) -> list[str]:
    """The clients' regions and the host's, each once (what the grid must know)."""
    return list(dict.fromkeys([*regions, cfg.carbon.country.strip().upper()]))


def build_run_grid(cfg: FedlabConfig, regions: list[str]) -> GridIntensity:
    """The run's intensities (:func:`fedlab.trackers.carbon.grid.build_grid`)."""
    from fedlab.trackers.carbon.grid import build_grid

    return build_grid(cfg.carbon, cfg.clock, needed_regions(cfg, regions), cfg.seed)


def config_error(err: Exception, key: str) -> Exception:
    """``err`` as the one-line :class:`ConfigError` the user sees: a message that already
    starts with a config key (``clock.deadline_hours: ...``) keeps it, others get ``key``."""
    from fedlab.config.errors import ConfigError

    if isinstance(err, ConfigError):
        return err
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    head, sep, rest = text.partition(": ")
    if sep and head.startswith(("clock.", "carbon.")) and " " not in head:
        return ConfigError(head, rest)
    return ConfigError(key, text)


def check_clock(exp: Any) -> None:
    """Start-up checks of the clock before any data is loaded: the intensities load (every
    trace and forecast file valid, every region with a trace), a policy has something to
    decide on, and a deadline leaves room for the training without simulated devices."""
    cfg = exp.cfg
    clock = cfg.clock
    if clock.policy != "immediate" and cfg.carbon.intensity != "trace" and (
        not cfg.carbon.intensity_profile
    ):
        from fedlab.config.errors import ConfigError

        raise ConfigError(
            "clock.policy",
            f"{clock.policy} needs intensities that change with time: carbon.intensity=trace "
            "(or an hourly carbon.intensity_profile); static annual values never differ",
        )
    uses_grid = cfg.carbon.enabled or clock.policy != "immediate" or (
        cfg.strategy.selection == "carbon_aware"
    )
    if uses_grid:
        try:
            exp.grid()
        except (ValueError, OSError) as err:
            raise config_error(err, "carbon.traces") from None
    if clock.policy != "immediate" and not cfg.devices.enabled:
        from fedlab.fl.shifting import ShiftError

        try:
            exp.scheduler().policy.check(cfg.num_rounds, clock.round_s)
        except ShiftError as err:
            raise config_error(err, "clock.deadline_hours") from None


def check_timeline(exp: Any, fed: Any) -> None:
    """Work the whole clock out before the record is written: every round's time, so that a
    trace that does not cover the simulated period, clients never available, or a deadline
    the devices cannot meet end the run in one line now rather than in round 40."""
    cfg = exp.cfg
    dated = cfg.clock.start is not None
    if not dated:
        return
    try:
        scheduler = exp.scheduler(fed)
        end = scheduler.round_time(cfg.num_rounds).end_s
        grid = exp.grid()
        grid.check_covers(needed_regions(cfg, exp.regions()), 0.0, end, "clock.start")
    except (ValueError, OSError) as err:
        raise config_error(err, "clock.start") from None
    deadline = cfg.clock.deadline_hours
    if deadline is not None and cfg.clock.policy == "deadline" and end > deadline * 3600.0:
        from fedlab.config.errors import ConfigError

        raise ConfigError(
            "clock.deadline_hours",
            f"{deadline:g} h is shorter than the training needs ({cfg.num_rounds} rounds end "
            f"after {end / 3600.0:.3g} h on the simulated clock)",
        )


def clock_summary(cfg: Any, scheduler: Scheduler, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's ``clock`` section from its rounds so far (``rounds.csv`` rows): when
    training started and ended on the simulated clock, how long rounds waited, whether the
    deadline was met, and when the central accuracy first reached ``clock.target_accuracy``
    (simulated hours from ``clock.start``)."""
    from fedlab.config.clock import format_utc

    clock = cfg.clock
    done = [int(r["round"]) for r in rounds if int(r["round"]) > 0]
    end_s = scheduler.round_time(done[-1]).end_s if done else None
    hours = None
    if clock.target_accuracy is not None:
        reached = [
            int(r["round"]) for r in rounds
            if int(r["round"]) > 0 and (r.get("central_accuracy") or 0.0) >= clock.target_accuracy
        ]
        hours = scheduler.round_time(reached[0]).end_s / 3600.0 if reached else None
    deadline, start = clock.deadline_hours, clock.start_epoch
    return {
        "start_utc": clock.start,
        "end_utc": None if start is None or end_s is None else format_utc(start + end_s),
        "policy": clock.policy,
        "interruptible": clock.interruptible,
        "deadline_hours": deadline,
        "sim_hours": None if end_s is None else end_s / 3600.0,
        "wait_hours": sum(scheduler.round_time(r).wait_s for r in done) / 3600.0,
        "deadline_met": None if deadline is None or end_s is None else end_s <= deadline * 3600,
        "target_accuracy": clock.target_accuracy,
        "hours_to_target": hours,
    }
