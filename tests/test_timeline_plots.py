"""The issue #18 pictures (fedlab/reports/timeline.py), checked on what they draw.

Expected numbers come from the inputs by hand: the DEU trace is read with ``csv`` and looked
up with ``bisect``, matplotlib's dates are decoded with its own ``num2date``, and medians are
numpy's, so none of them goes through the code under test.
"""

from __future__ import annotations

import bisect
import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import dates

from fedlab.record.run_dir import save_figure
from fedlab.reports.timeline import TimelineError, avoided_figure, timeline_figure

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOUR = 3600.0
DAY = 86400.0
T0 = datetime(2020, 6, 15, tzinfo=UTC).timestamp()


def deu_trace() -> tuple[list[float], list[float]]:
    """The bundled DEU 2020 trace (or the shared copy it is made from), read with csv."""
    for path in (
        ROOT / "fedlab/trackers/carbon/traces/DEU_2020.csv",
        ROOT.parent / "shared/data/carbon_traces/DEU_2020.csv",
    ):
        if path.exists():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            times = [datetime.fromisoformat(r["timestamp_utc"]).timestamp() for r in rows]
            return times, [float(r["gco2_per_kwh"]) for r in rows]
    pytest.skip("no DEU_2020.csv trace (bundled or in shared/)")


def hourly(values: list[float], start: float = T0) -> tuple[list[float], list[float]]:
    return [start + i * HOUR for i in range(len(values))], values


def utc(num: float) -> datetime:
    """A matplotlib date number back to a UTC datetime, rounded to the second."""
    when = dates.num2date(num, tz=UTC)
    return (when + timedelta(microseconds=500_000)).replace(microsecond=0)


def span_xs(patch: Any) -> np.ndarray:
    """A patch's corners' x in data units, whether matplotlib drew it as a Rectangle (3.9+)
    or a Polygon (before)."""
    return patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]


def stamp(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


# Rounds 1-3 back to back, a 2 h wait, 4-5, a 3 h wait, 6: three blocks, 5 h waited.
ROUNDS = [
    (1, T0 + 1 * HOUR, T0 + 2 * HOUR),
    (2, T0 + 2 * HOUR, T0 + 3 * HOUR),
    (3, T0 + 3 * HOUR, T0 + 4 * HOUR),
    (4, T0 + 6 * HOUR, T0 + 7 * HOUR),
    (5, T0 + 7 * HOUR, T0 + 8.5 * HOUR),
    (6, T0 + 11.5 * HOUR, T0 + 12 * HOUR),
]
INTENSITY = {"AAA": hourly([float(100 + 10 * i) for i in range(16)]), "BBB": hourly([50.0] * 16)}


def test_one_line_per_region_and_forecast_dashed_in_its_colour() -> None:
    forecast = {"AAA": hourly([float(105 + 10 * i) for i in range(16)])}
    fig = timeline_figure(INTENSITY, ROUNDS, forecast=forecast, kind="marginal", title="run 7")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert sorted(lines) == ["AAA", "AAA forecast", "BBB"]
    assert lines["AAA forecast"].get_color() == lines["AAA"].get_color()
    assert lines["AAA forecast"].get_linestyle() == "--"
    assert lines["AAA"].get_linestyle() == "-"
    assert lines["AAA"].get_color() != lines["BBB"].get_color()
    assert ax.get_ylabel() == "gCO2e/kWh (marginal)"
    assert ax.get_title() == "Carbon intensity and 6 rounds, 5.0 h waited between rounds: run 7"


def test_round_spans_cover_the_rounds_and_gaps_are_the_waits() -> None:
    fig = timeline_figure(INTENSITY, list(reversed(ROUNDS)))
    ax, strip = fig.axes
    bars = strip.patches
    assert len(bars) == len(ROUNDS)
    drawn = sorted((utc(b.get_x()), utc(b.get_x() + b.get_width())) for b in bars)
    assert drawn == [(stamp(a), stamp(b)) for _, a, b in ROUNDS]
    assert [t.get_text() for t in strip.texts] == [str(n) for n, _, _ in ROUNDS]
    # the shading on the intensity panel: one span per block of back-to-back rounds
    spans = sorted((utc(min(xs)), utc(max(xs))) for xs in map(span_xs, ax.patches))
    blocks = [(T0 + 1 * HOUR, T0 + 4 * HOUR), (T0 + 6 * HOUR, T0 + 8.5 * HOUR)]
    blocks.append((T0 + 11.5 * HOUR, T0 + 12 * HOUR))
    assert spans == [(stamp(a), stamp(b)) for a, b in blocks]


def test_clients_sit_on_their_regions_curve_of_the_deu_trace() -> None:
    times, values = deu_trace()
    start = datetime(2020, 3, 2, 9, tzinfo=UTC).timestamp()
    rounds = [(n + 1, start + n * 5400.0, start + n * 5400.0 + 3000.0) for n in range(8)]
    clients = [(a + 60.0 * k, "DEU") for _, a, _ in rounds for k in range(4)]
    fig = timeline_figure({"DEU": (times, values)}, rounds, clients)
    ax = fig.axes[0]
    (dots,) = ax.collections
    expected = [values[bisect.bisect_right(times, t) - 1] for t, _ in clients]
    assert dots.get_offsets()[:, 1].tolist() == expected
    assert [utc(x) for x in dots.get_offsets()[:, 0]] == [stamp(t) for t, _ in clients]
    # a year's trace under a half-day run: only the rows overlapping the padded view are drawn
    lo, hi = rounds[0][1], rounds[-1][2]
    pad = 0.05 * (hi - lo)
    overlapping = [
        i
        for i, t in enumerate(times)
        if t < hi + pad and (times[i + 1] if i + 1 < len(times) else t + HOUR) > lo - pad
    ]
    (line,) = ax.lines
    assert len(line.get_xdata()) == len(overlapping) + 1
    assert list(line.get_ydata()[:-1]) == [values[i] for i in overlapping]


def test_hundreds_of_rounds_and_thousands_of_clients(tmp_path: Path) -> None:
    rounds = [(n, T0 + n * 1.2 * HOUR, T0 + (n * 1.2 + 1) * HOUR) for n in range(500)]
    clients = [(a + 30.0 * k, "AAA") for _, a, _ in rounds for k in range(40)]
    intensity = {"AAA": hourly([float(200 + i % 24) for i in range(700)])}
    fig = timeline_figure(intensity, rounds, clients)
    ax, strip = fig.axes
    assert len(strip.patches) == 500
    assert len(strip.texts) == 0  # round numbers would overlap; the bars stay
    (dots,) = ax.collections
    assert len(dots.get_offsets()) == 20_000
    assert dots.get_alpha() < 0.1
    save_figure(fig, tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").read_bytes()[:8] == PNG_MAGIC


def test_one_row_trace_holds_to_the_edge_of_the_view() -> None:
    fig = timeline_figure({"AAA": ([T0], [80.0])}, ROUNDS[:2])
    (line,) = fig.axes[0].lines
    assert list(line.get_ydata()) == [80.0, 80.0]
    assert utc(line.get_xdata()[-1]) > stamp(ROUNDS[1][2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"intensity": {}}, r"^intensity: no region has a trace$"),
        ({"rounds": []}, r"^rounds: no rounds to draw$"),
        ({"rounds": [(1, T0 + 2 * HOUR, T0 + HOUR)]}, r"^rounds\[0\] \(round 1\): ends at"),
        ({"intensity": {"AAA": ([T0, T0], [1.0, 2.0])}}, r"^intensity\[AAA\] row 1: .*increasing"),
        ({"intensity": {"AAA": ([T0], [1.0, 2.0])}}, r"^intensity\[AAA\]: 1 times but 2 values"),
        ({"intensity": {"AAA": ([], [])}}, r"^intensity\[AAA\]: no rows$"),
        ({"clients": [(T0, "ZZZ")]}, r"^clients\[0\]: region 'ZZZ' has no intensity trace"),
        ({"clients": [(T0 - 5 * HOUR, "AAA")]}, r"^clients: a AAA client at .* lies outside"),
        ({"forecast": {"ZZZ": ([T0], [1.0])}}, r"^forecast\[ZZZ\]: no intensity trace"),
        ({"intensity": {"AAA": hourly([1.0, 2.0], T0 - 9 * DAY)}}, r"^intensity\[AAA\]: covers"),
    ],
)
def test_timeline_rejects_bad_input_in_one_line(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"intensity": INTENSITY, "rounds": ROUNDS, **kwargs}
    with pytest.raises(TimelineError, match=match) as caught:
        timeline_figure(**args)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


def sweep() -> tuple[list[dict[str, Any]], dict[tuple[str, str], list[float]]]:
    """Rows of a replay sweep over 12 monthly start dates, and the avoided % per
    (region, policy) in start order, as the test made them."""
    rng = np.random.default_rng(3)
    rows, made = [], {}
    for month in range(1, 13):
        start = datetime(2020, month, 1, tzinfo=UTC).isoformat().replace("+00:00", "Z")
        for region in ("GBR", "DEU"):
            rows.append(
                {
                    "start_utc": start,
                    "policy": "immediate",
                    "region": region,
                    "emissions_kg": 2.0 + month,
                    "avoided_pct": 0.0,
                }
            )
            for policy in ("deadline 24h", "threshold 150"):
                pct = float(rng.normal(8.0, 4.0))
                made.setdefault((region, policy), []).append(pct)
                rows.append(
                    {
                        "start_utc": start,
                        "policy": policy,
                        "region": region,
                        "emissions_kg": (2.0 + month) * (1 - pct / 100),
                        "avoided_pct": pct,
                    }
                )
    return rows, made


def test_avoided_medians_and_lines_per_policy(tmp_path: Path) -> None:
    rows, made = sweep()
    fig = avoided_figure(rows, title="replay")
    assert fig.get_suptitle() == "Emissions avoided against immediate over 12 start dates: replay"
    assert len(fig.axes) == 4  # two regions (sorted), a box row and a by-date row
    for column, region in enumerate(("DEU", "GBR")):
        top, bottom = fig.axes[column], fig.axes[2 + column]
        # the baseline's median emissions (months 1..12 -> 3..14 kg) head the column
        assert (
            top.get_title()
            == f"{region}: immediate median {np.median(np.arange(3, 15)):.3g} kgCO2e"
        )
        assert [t.get_text() for t in top.get_xticklabels()] == ["deadline 24h", "threshold 150"]
        for policy in ("deadline 24h", "threshold 150"):
            (note,) = [t for t in top.texts if t.get_gid() == f"median:{policy}"]
            median = float(np.median(made[(region, policy)]))
            assert note.get_position()[1] == pytest.approx(median, abs=1e-12)
            assert note.get_text() == f"{median:.1f}%"
        lines = {
            line.get_label(): line for line in bottom.lines if not line.get_label().startswith("_")
        }
        assert sorted(lines) == ["deadline 24h", "threshold 150"]
        for policy, line in lines.items():
            assert list(line.get_ydata()) == made[(region, policy)]
            assert [d.month for d in line.get_xdata()] == list(range(1, 13))
    save_figure(fig, tmp_path / "avoided.png")
    assert (tmp_path / "avoided.png").read_bytes()[:8] == PNG_MAGIC


def only_baseline(rows: list[dict[str, Any]]) -> None:
    rows[:] = [row for row in rows if row["policy"] == "immediate"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rows: rows.clear(), r"^rows: no replay results to draw$"),
        (lambda rows: rows[3].pop("region"), r"^rows\[3\]: missing key 'region'$"),
        (lambda rows: rows[1].update(avoided_pct="n/a"), r"^rows\[1\]\.avoided_pct: 'n/a' is not"),
        (lambda rows: rows[2].update(emissions_kg=-1.0), r"^rows\[2\]\.emissions_kg: -1.0 is neg"),
        (lambda rows: rows[0].update(start_utc="2020-01-01T00:00:00"), r"^rows\[0\]\.start_utc"),
        (lambda rows: rows.append(dict(rows[1])), r"^rows\[72\]: a second row for 2020-01-01"),
        (only_baseline, r"^rows: no policy other than the baseline 'immediate'$"),
    ],
)
def test_avoided_rejects_bad_rows_in_one_line(mutate: Any, match: str) -> None:
    rows, _ = sweep()
    mutate(rows)
    with pytest.raises(TimelineError, match=match):
        avoided_figure(rows)
