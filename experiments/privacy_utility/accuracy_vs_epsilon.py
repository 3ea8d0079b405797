"""Accuracy against final epsilon (delta 1e-5) for the privacy/utility study's runs.

Reads each run's results.json under the sweep directories given (default: the ones in this
folder's README), prints one table row per run and draws accuracy_vs_epsilon.png, one marker
series per (mode, client sampling). Today's (pre-amplification) table is drawn beside them from
the numbers in the README, hollow, as it was recorded.

    .venv/bin/python experiments/privacy_utility/accuracy_vs_epsilon.py [SWEEP_DIR ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from matplotlib.figure import Figure

HERE = Path(__file__).resolve().parent
DEFAULT_SWEEPS = [
    "/tmp/dpstudy/central_poisson",
    "/tmp/dpstudy/central_fixed02",
    "/tmp/dpstudy/local",
]
LABELS = {
    "poisson q=0.2": "central DP, Poisson q = 0.2, add/remove (Opacus RDP)",
    "fixed q=0.2": "central DP, fixed 10 of 50, replace-one (dp-accounting RDP)",
    "all clients": "local DP, Opacus RDP per client (unchanged)",
}
#: Today's table (README, before amplified accounting): (mode, z, accuracy, final epsilon).
TODAY = [
    ("local", 0.5, 0.722, 81.1),
    ("local", 1.0, 0.694, 30.1),
    ("local", 2.0, 0.683, 12.3),
    ("central", 0.5, 0.867, 110.7),
    ("central", 1.0, 0.867, 39.8),
    ("central", 2.0, 0.858, 15.9),
]


def read_run(run: Path) -> dict | None:
    """One row from a run directory, or None when it has no finished record."""
    path = run / "results.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    privacy = record.get("privacy") or {}
    mode = privacy.get("mode", "?")
    sampling = privacy.get("client_sampling") or "fixed"
    rate = privacy.get("client_sampling_rate")
    epsilon = privacy.get("epsilon")
    return {
        "run": str(run),
        "status": record.get("status"),
        "rounds": record.get("rounds_completed"),
        "mode": mode,
        "sampling": f"{sampling} q={rate:g}" if mode == "central" else "all clients",
        "z": privacy.get("noise_multiplier"),
        "accuracy": record.get("accuracy"),
        "epsilon": math.inf if epsilon is None else float(epsilon),
        "epsilons": privacy.get("epsilons") or {},
        "accountant": privacy.get("accountant"),
    }


def main(sweeps: list[str]) -> None:
    rows = []
    for sweep in sweeps:
        root = Path(sweep)
        if not root.is_dir():
            print(f"(skipped {sweep}: not there)")
            continue
        for run in sorted(p for p in root.iterdir() if p.is_dir()):
            row = read_run(run)
            if row is not None:
                rows.append(row)

    print("| mode | sampling | z | rounds | accuracy | epsilon (reported) | rdp / prv / pld |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        eps = r["epsilons"]
        parts = " / ".join(f"{eps[k]:.2f}" if k in eps else "-" for k in ("rdp", "prv", "pld"))
        print(
            f"| {r['mode']} | {r['sampling']} | {r['z']:g} | {r['rounds']} | "
            f"{r['accuracy']:.3f} | {r['epsilon']:.2f} | {parts} |"
        )

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = iter("osD^vP*X")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if math.isfinite(r["epsilon"]):
            groups.setdefault((r["mode"], r["sampling"]), []).append(r)
    for (mode, sampling), group in sorted(groups.items()):
        group.sort(key=lambda r: r["epsilon"])
        ax.plot(
            [r["epsilon"] for r in group],
            [r["accuracy"] for r in group],
            marker=next(markers),
            label=LABELS.get(sampling, f"{mode} DP, {sampling}"),
        )
        for r in group:
            ax.annotate(
                f"z={r['z']:g}",
                (r["epsilon"], r["accuracy"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    for mode, marker in (("local", "o"), ("central", "s")):
        pts = sorted((e, a) for m, _, a, e in TODAY if m == mode)
        label = "all 50, unamplified RDP" if mode == "central" else "as recorded"
        ax.plot(
            [e for e, _ in pts],
            [a for _, a in pts],
            marker=marker,
            linestyle=":",
            markerfacecolor="none",
            color="grey",
            label=f"today: {mode} DP, {label}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("final epsilon at delta = 1e-5 (log scale)")
    ax.set_ylabel("centralized test accuracy (fraction)")
    ax.set_title("Digits: accuracy against epsilon, local and central DP (seed 0)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = HERE / "accuracy_vs_epsilon.png"
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_SWEEPS)
