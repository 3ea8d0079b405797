"""Temporal policies and local-time availability (fedlab.fl.shifting), against hand-made
costs with a known optimum, brute force in exact arithmetic, and UTC instants worked out by hand
around daylight-saving changes."""

from __future__ import annotations

import calendar
import itertools
import random
from fractions import Fraction

import numpy as np
import pytest

from fedlab.fl.shifting import (
    POLICIES,
    REGION_TIMEZONES,
    Availability,
    ShiftError,
    TemporalPolicy,
    Window,
    parse_window,
    region_timezone,
    slot_choice,
)

H = 3600.0
NIGHT = "22:00-06:00"


def _utc(year: int, month: int, day: int, hour: int, minute: int) -> float:
    """Epoch seconds of a UTC wall time, by the stdlib's calendar arithmetic (no time zones)."""
    return float(calendar.timegm((year, month, day, hour, minute, 0)))


def _hourly(costs: list[float], calls: list[tuple[float, float, float]] | None = None):
    """A perfect signal over hourly costs: slot [a, a + 1 h) costs costs[a / 1 h]."""

    def signal(a: float, b: float, issued_at: float) -> float:
        assert a % H == 0 and b - a == H, (a, b)  # slots stay on the hour grid
        if calls is not None:
            calls.append((a, b, issued_at))
        return costs[int(a // H)]

    return signal


def _brute_block(costs: list[Fraction], m: int) -> int:
    """The earliest start of the cheapest contiguous block of m slots, in exact arithmetic."""
    sums = [sum(costs[s : s + m], Fraction(0)) for s in range(len(costs) - m + 1)]
    return sums.index(min(sums))


def _brute_cheapest(costs: list[float], m: int) -> list[int]:
    """The m cheapest slots, ties to the earlier slot: every m-subset, the lowest (sum, slots)."""
    return list(min(itertools.combinations(range(len(costs)), m), key=lambda s: (
        sum(Fraction(costs[i]) for i in s), s)))


# ------------------------------------------------------------------------------ slot_choice


def test_slot_choice_picks_the_three_cheapest_of_twelve_hours() -> None:
    costs = [5, 3, 8, 1, 9, 2, 7, 4, 6, 2, 10, 11]  # cheapest: 1 (h3), 2 (h5), 2 (h9)
    assert slot_choice(costs, 3, True) == [3, 5, 9]
    assert slot_choice(costs, 3, True) == _brute_cheapest(costs, 3)


def test_slot_choice_ties_go_to_the_earlier_slot() -> None:
    assert slot_choice([4, 1, 4, 1, 4, 1], 2, True) == [1, 3]
    # blocks of two: sums 3, 2, 3, 3, 2, 3 -> the first block of sum 2 starts at slot 1
    assert slot_choice([2, 1, 1, 2, 1, 1, 2], 2, False) == [1, 2]
    # 0.7 + 0.2 and 0.2 + 0.7 tie exactly, but a running sum in binary makes the later block
    # look a hair cheaper
    costs = ["0.7", "0.7", "0.3", "0.7", "0.2", "0.7"]
    assert _brute_block([Fraction(c) for c in costs], 2) == 3
    assert slot_choice([float(c) for c in costs], 2, False) == [3, 4]


def test_slot_choice_block_matches_brute_force_on_twelve_hours() -> None:
    costs = ["310.5", "290.25", "120", "95.5", "101", "250", "80", "79.75", "300", "60", "400",
             "75"]
    exact = [Fraction(c) for c in costs]
    for m in range(1, 13):
        start = _brute_block(exact, m)
        assert slot_choice([float(c) for c in costs], m, False) == list(range(start, start + m))


@pytest.mark.parametrize("seed", range(30))
def test_slot_choice_matches_brute_force_on_random_costs(seed: int) -> None:
    rng = random.Random(seed)
    k = rng.randint(4, 12)
    costs = [float(rng.randint(0, 5)) for _ in range(k)]  # few values: many ties
    m = rng.randint(1, min(4, k))
    assert slot_choice(costs, m, True) == _brute_cheapest(costs, m)
    start = _brute_block([Fraction(c) for c in costs], m)
    assert slot_choice(costs, m, False) == list(range(start, start + m))


def test_slot_choice_rejects_more_rounds_than_slots_and_non_numbers() -> None:
    with pytest.raises(ShiftError, match="3 rounds do not fit in 2 slots"):
        slot_choice([1.0, 2.0], 3, True)
    with pytest.raises(ShiftError, match="slot 1 has intensity nan"):
        slot_choice([1.0, float("nan"), 2.0], 1, False)
    assert slot_choice([1.0], 0, True) == []


# ------------------------------------------------------------------------------ policies


def _replay(policy: TemporalPolicy, rounds: int, signal, duration: float = H) -> list[float]:
    """Round by round as the simulated clock does: each round starts where the policy says,
    and the next plan is made at its end."""
    now, starts = 0.0, []
    for r in range(rounds):
        start = policy.next_start(now, rounds - r, duration, signal, first=r == 0)
        assert start >= now
        starts.append(start)
        now = start + duration
    return starts


COSTS_24 = [420, 410, 380, 300, 250, 260, 330, 390, 410, 300, 180, 120,
            110, 130, 200, 310, 400, 450, 470, 460, 440, 430, 425, 415]  # fmt: skip


def test_deadline_replanning_reproduces_the_static_optimum() -> None:
    """With a perfect signal and equal rounds, replanning every round picks the same slots as
    one plan made before round 1 (the cheapest 5 of 24 hours: 11, 12, 13, 10, 14)."""
    calls: list[tuple[float, float, float]] = []
    policy = TemporalPolicy("deadline", deadline_s=24 * H)
    policy.check(5, H)
    starts = _replay(policy, 5, _hourly(COSTS_24, calls))
    assert [s / H for s in starts] == [10, 11, 12, 13, 14]
    assert [int(s // H) for s in starts] == _brute_cheapest(COSTS_24, 5)
    # each plan prices every slot left before the deadline once, issued when it is made
    plans = sorted({issued for _, _, issued in calls})
    assert plans == [0.0, 11 * H, 12 * H, 13 * H, 14 * H]
    assert sum(1 for *_, issued in calls if issued == 0.0) == 24
    assert sum(1 for *_, issued in calls if issued == 11 * H) == 24 - 11


def test_deadline_interruptible_leaves_gaps_for_dirty_hours() -> None:
    costs = [100, 900, 100, 900, 100, 900, 900, 900]
    starts = _replay(TemporalPolicy("deadline", deadline_s=8 * H), 3, _hourly(costs))
    assert [s / H for s in starts] == [0, 2, 4]


def test_deadline_not_interruptible_moves_only_the_start_of_one_block() -> None:
    costs = [100, 900, 100, 900, 100, 900, 150, 150, 160, 900]
    policy = TemporalPolicy("deadline", deadline_s=10 * H, interruptible=False)
    starts = _replay(policy, 3, _hourly(costs))
    start = _brute_block([Fraction(c) for c in costs], 3)  # 6: 150 + 150 + 160
    assert start == 6
    assert [s / H for s in starts] == [6, 7, 8]


def test_deadline_block_matches_brute_force_over_a_long_signal() -> None:
    rng = random.Random(7)
    costs = [float(rng.randint(50, 500)) for _ in range(400)]
    policy = TemporalPolicy("deadline", deadline_s=400 * H, interruptible=False)
    start = _brute_block([Fraction(c) for c in costs], 30)
    assert policy.next_start(0.0, 30, H, _hourly(costs), first=True) == start * H


def test_deadline_signal_is_called_once_per_slot() -> None:
    """A replay reruns the plan under hundreds of start dates: one signal call per candidate
    slot, never per pair of slots."""
    calls: list[tuple[float, float, float]] = []
    costs = [float((i * 37) % 101) for i in range(5000)]
    for interruptible in (True, False):
        calls.clear()
        policy = TemporalPolicy("deadline", deadline_s=5000 * H, interruptible=interruptible)
        policy.next_start(0.0, 200, H, _hourly(costs, calls), first=True)
        assert len(calls) == 5000


def test_deadline_that_can_no_longer_be_met_starts_now() -> None:
    policy = TemporalPolicy("deadline", deadline_s=10 * H)
    assert policy.next_start(8 * H, 3, H, _hourly([0.0] * 20), first=False) == 8 * H
    assert policy.next_start(12 * H, 1, H, _hourly([0.0] * 20), first=False) == 12 * H


def test_deadline_slots_end_exactly_at_the_deadline_with_decimal_hours() -> None:
    """30 rounds of 0.1 h fit a 3 h deadline exactly, though 3 / 0.1 is 29.999... in binary."""
    policy = TemporalPolicy("deadline", deadline_s=3 * H)
    policy.check(30, 0.1 * H)
    signal = lambda a, b, t: 1.0  # noqa: E731 - a flat forecast: any slot is as good
    assert policy.next_start(0.0, 30, 0.1 * H, signal, first=True) == 0.0


def test_threshold_waits_for_the_first_slot_under_the_threshold() -> None:
    costs = [500, 450, 300, 200, 350, 190, 600, 600, 600, 600, 600, 600]
    policy = TemporalPolicy("threshold", threshold=200.0, deadline_s=12 * H)
    # h3 costs exactly the threshold (qualifies), then h5; round 3 finds nothing under 200 and
    # starts as late as the deadline allows: 12 h - 1 round
    assert [s / H for s in _replay(policy, 3, _hourly(costs))] == [3, 5, 11]


def test_threshold_meets_the_deadline_when_no_slot_qualifies() -> None:
    costs = [500.0] * 9 + [10.0]  # the only clean hour is too late for 3 rounds
    policy = TemporalPolicy("threshold", threshold=100.0, deadline_s=10 * H)
    starts = _replay(policy, 3, _hourly(costs))
    assert [s / H for s in starts] == [7, 8, 9]
    assert starts[-1] + H == 10 * H  # the last round ends on the deadline


def test_threshold_without_deadline_waits_at_most_the_horizon() -> None:
    policy = TemporalPolicy("threshold", threshold=100.0, horizon_s=5 * H)
    policy.check(2, H)
    assert policy.next_start(0.0, 2, H, _hourly([500.0] * 20), first=True) == 5 * H
    assert policy.next_start(H, 2, H, _hourly([500, 500, 500, 90] + [500] * 9), True) == 3 * H


def test_threshold_not_interruptible_waits_only_before_the_first_round() -> None:
    costs = [500, 90, 500, 500, 500, 500]
    policy = TemporalPolicy("threshold", threshold=100.0, deadline_s=6 * H, interruptible=False)
    assert [s / H for s in _replay(policy, 3, _hourly(costs))] == [1, 2, 3]


def test_immediate_returns_now_without_asking_the_signal() -> None:
    def signal(a: float, b: float, t: float) -> float:
        raise AssertionError("immediate must not read the forecast")

    policy = TemporalPolicy()
    policy.check(30, H)
    assert policy.next_start(7.5 * H, 4, H, signal, first=False) == 7.5 * H
    assert _replay(policy, 3, signal) == [0.0, H, 2 * H]


def test_infeasible_deadline_names_the_key_and_the_numbers() -> None:
    with pytest.raises(ShiftError) as info:
        TemporalPolicy("deadline", deadline_s=24 * H).check(30, H)
    assert str(info.value) == (
        "clock.deadline_hours: 24 h is shorter than the training needs (30 rounds x 1 h = 30 h)"
    )
    with pytest.raises(ShiftError) as info:
        TemporalPolicy("threshold", threshold=1.0, deadline_s=2 * H).check(5, 0.5 * H)
    assert str(info.value).startswith("clock.deadline_hours: 2 h is shorter")
    assert str(info.value).endswith("(5 rounds x 0.5 h = 2.5 h)")
    TemporalPolicy("deadline", deadline_s=30 * H).check(30, H)  # exactly enough


@pytest.mark.parametrize(
    ("policy", "key"),
    [
        (TemporalPolicy("deadline"), "clock.deadline_hours"),
        (TemporalPolicy("threshold"), "clock.threshold_g_per_kwh"),
        (TemporalPolicy("threshold", threshold=-1.0), "clock.threshold_g_per_kwh"),
        (TemporalPolicy("threshold", threshold=1.0, horizon_s=-H), "clock.max_wait_hours"),
    ],
)
def test_missing_policy_settings_name_their_key(policy: TemporalPolicy, key: str) -> None:
    with pytest.raises(ShiftError, match=rf"^{key}: "):
        policy.check(3, H)


def test_unknown_policy_names_the_key_and_the_allowed_values() -> None:
    with pytest.raises(ShiftError) as info:
        TemporalPolicy("greedy").check(3, H)
    message = str(info.value)
    assert message.startswith("clock.policy: ") and "'greedy'" in message
    assert all(kind in message for kind in ("immediate", "deadline", "threshold"))
    assert POLICIES == ("immediate", "deadline", "threshold")
    with pytest.raises(ShiftError, match=r"^clock\.policy: "):
        TemporalPolicy("greedy").next_start(0.0, 3, H, _hourly([1.0] * 5), first=True)


# ------------------------------------------------------------------------------ windows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NIGHT, Window(22 * 60, 6 * 60)),
        (" 08:30 - 17:45 ", Window(8 * 60 + 30, 17 * 60 + 45)),
        ("18:00-24:00", Window(18 * 60, 24 * 60)),
        ("0:00-7:05", Window(0, 7 * 60 + 5)),
    ],
)
def test_parse_window(text: str, expected: Window) -> None:
    assert parse_window(text, "clock.availability") == expected


@pytest.mark.parametrize(
    "text",
    ["22-06", "22:00", "22:00-06", "25:00-06:00", "22:60-06:00", "24:00-06:00", "08:00-24:30",
     "10:00-10:00", "00:00-24:00", "", "always now", 2200, None],
)
def test_bad_windows_are_one_line_naming_the_key(text: object) -> None:
    with pytest.raises(ShiftError) as info:
        parse_window(text, "clock.availability.3")  # type: ignore[arg-type]
    assert str(info.value).startswith("clock.availability.3: ")
    assert "\n" not in str(info.value)


def test_window_is_half_open_and_wraps_midnight() -> None:
    night = Window(22 * 60, 6 * 60)
    assert [night.contains(m) for m in (21 * 60 + 59.99, 22 * 60, 0, 5 * 60 + 59.99, 6 * 60)] == [
        False, True, True, True, False]  # fmt: skip
    day = Window(9 * 60, 17 * 60)
    assert [day.contains(m) for m in (8 * 60 + 59, 9 * 60, 16 * 60 + 59, 17 * 60)] == [
        False, True, True, False]  # fmt: skip
    assert str(night) == NIGHT


# ------------------------------------------------------------------------------ availability


def test_night_window_in_berlin_follows_the_spring_dst_change() -> None:
    """Berlin is UTC+1 until 2020-03-29 01:00 UTC and UTC+2 after it, so the night of 28/29
    March opens at 21:00 UTC (22:00 CET) and closes at 04:00 UTC (06:00 CEST); the next night
    opens at 20:00 UTC (22:00 CEST)."""
    avail = Availability.from_config(NIGHT, ["DEU"], None, 1, seed=0)
    expected = {
        (2020, 3, 28, 20, 59): False,  # 21:59 CET
        (2020, 3, 28, 21, 0): True,  # 22:00 CET
        (2020, 3, 29, 0, 59): True,  # 01:59 CET, the last minute of winter time
        (2020, 3, 29, 1, 0): True,  # 03:00 CEST
        (2020, 3, 29, 3, 59): True,  # 05:59 CEST
        (2020, 3, 29, 4, 0): False,  # 06:00 CEST (in winter time this would still be 05:00)
        (2020, 3, 29, 4, 30): False,
        (2020, 3, 29, 19, 59): False,  # 21:59 CEST
        (2020, 3, 29, 20, 0): True,  # 22:00 CEST
    }
    assert {t: avail.available(0, _utc(*t)) for t in expected} == expected


def test_night_window_in_berlin_follows_the_autumn_dst_change() -> None:
    """Back to UTC+1 at 2020-10-25 01:00 UTC: that morning's window closes at 05:00 UTC."""
    avail = Availability([Window(22 * 60, 6 * 60)], ["Europe/Berlin"])
    expected = {
        (2020, 10, 24, 19, 59): False,  # 21:59 CEST
        (2020, 10, 24, 20, 0): True,  # 22:00 CEST
        (2020, 10, 25, 4, 30): True,  # 05:30 CET
        (2020, 10, 25, 5, 0): False,  # 06:00 CET
        (2020, 10, 25, 20, 59): False,  # 21:59 CET
        (2020, 10, 25, 21, 0): True,  # 22:00 CET
    }
    assert {t: avail.available(0, _utc(*t)) for t in expected} == expected


def test_available_clients_reads_each_clients_own_zone() -> None:
    """At 2020-06-15 04:30 UTC it is 06:30 in Berlin (closed), 05:30 in London (open), 13:30
    in Tokyo (no DST; its 09:00-17:00 window is open) and 23:30 the day before in Lima
    (outside 08:00-20:00)."""
    spec = {0: NIGHT, 1: NIGHT, 2: "09:00-17:00", 3: "08:00-20:00", "default": "always"}
    avail = Availability.from_config(spec, ["DEU", "GBR", "JPN", "PER", "XYZ"], None, 5, seed=0)
    assert avail.zones[:4] == ("Europe/Berlin", "Europe/London", "Asia/Tokyo", "America/Lima")
    t = _utc(2020, 6, 15, 4, 30)
    assert avail.available_clients(t) == [1, 2, 4]
    assert [avail.available(c, t) for c in range(5)] == [False, True, True, False, True]


def test_timezone_override_applies_to_every_client() -> None:
    avail = Availability.from_config(NIGHT, ["DEU", "JPN"], "Asia/Tokyo", 2, seed=0)
    assert avail.zones == ("Asia/Tokyo", "Asia/Tokyo")
    assert avail.available_clients(_utc(2020, 6, 15, 14, 0)) == [0, 1]  # 23:00 in Tokyo


def test_no_availability_spec_means_everyone_always_and_needs_no_zone() -> None:
    for spec in (None, "always", "ALWAYS"):
        avail = Availability.from_config(spec, ["XYZ"] * 3, None, 3, seed=0)
        assert avail.windows == (None, None, None)
        assert avail.available_clients(_utc(2020, 1, 1, 12, 0)) == [0, 1, 2]


def test_mix_is_seeded_and_follows_the_weights() -> None:
    spec = {NIGHT: 0.7, "always": 0.3}
    regions = ["DEU"] * 20_000
    first = Availability.from_config(spec, regions, None, 20_000, seed=11)
    again = Availability.from_config(spec, regions, None, 20_000, seed=11)
    other = Availability.from_config(spec, regions, None, 20_000, seed=12)
    assert first.windows == again.windows
    assert first.windows != other.windows
    share = sum(w == Window(22 * 60, 6 * 60) for w in first.windows) / 20_000
    assert abs(share - 0.7) < 0.015  # 4.7 binomial standard deviations
    # the documented rule: default_rng(seed).choice over the options with normalised weights
    picks = np.random.default_rng(11).choice(2, size=20_000, p=[0.7, 0.3])
    assert first.windows == tuple(Window(1320, 360) if p == 0 else None for p in picks)
    # weights need not sum to 1
    scaled = Availability.from_config({NIGHT: 7, "always": 3}, regions, None, 20_000, seed=11)
    assert scaled.windows == first.windows


def test_per_client_mapping_with_default() -> None:
    avail = Availability.from_config({0: NIGHT, "2": "09:00-17:00", "default": "always"},
                                     ["DEU"] * 3, None, 3, seed=0)  # fmt: skip
    assert avail.windows == (Window(1320, 360), None, Window(540, 1020))
    no_default = Availability.from_config({1: NIGHT}, ["DEU"] * 2, None, 2, seed=0)
    assert no_default.windows == (None, Window(1320, 360))


@pytest.mark.parametrize(
    ("spec", "prefix"),
    [
        ({0: NIGHT, 3: "25:00-06:00"}, "clock.availability.3: "),
        ({0: NIGHT, 7: NIGHT}, "clock.availability.7: "),
        ({"night": NIGHT}, "clock.availability.night: "),
        ({0: NIGHT, "default": "sometimes"}, "clock.availability.default: "),
        ({"22:00-6": 1.0}, "clock.availability.22:00-6: "),
        ({NIGHT: -1.0, "always": 1.0}, f"clock.availability.{NIGHT}: "),
        ({NIGHT: 0, "always": 0}, "clock.availability: "),
        ({NIGHT: 0.5, 0: "always"}, "clock.availability: "),
        ({}, "clock.availability: "),
        (["22:00-06:00"], "clock.availability: "),
        ("22:00 to 06:00", "clock.availability: "),
    ],
)
def test_bad_availability_specs_name_the_key(spec: object, prefix: str) -> None:
    with pytest.raises(ShiftError) as info:
        Availability.from_config(spec, ["DEU"] * 4, None, 4, seed=0)
    assert str(info.value).startswith(prefix), str(info.value)
    assert "\n" not in str(info.value)


def test_region_timezone() -> None:
    assert region_timezone("DEU", None) == "Europe/Berlin"
    assert region_timezone("gbr", None) == "Europe/London"
    assert region_timezone("USA", "America/Chicago") == "America/Chicago"
    with pytest.raises(ShiftError, match=r"^clock\.timezone: no time zone known for USA; set "
                                         r"clock\.timezone=Area/City$"):  # fmt: skip
        region_timezone("USA", None)
    with pytest.raises(ShiftError, match=r"^clock\.timezone: unknown time zone 'Mars/Olympus'"):
        region_timezone("DEU", "Mars/Olympus")
    with pytest.raises(ShiftError, match=r"^clock\.timezone: "):
        Availability.from_config(NIGHT, ["USA"], None, 1, seed=0)


def test_region_timezones_are_real_zones_of_iso3_codes() -> None:
    from zoneinfo import ZoneInfo

    assert len(REGION_TIMEZONES) >= 40
    for region, zone in REGION_TIMEZONES.items():
        assert len(region) == 3 and region.isupper(), region
        assert ZoneInfo(zone).key == zone  # ZoneInfo raises for an unknown zone
