"""Epsilon (delta 1e-5) over rounds 1..100 of the dp_central setting, for each accountant.

50 clients, noise multiplier z = 1:

* Poisson client sampling at q = 0.2 (add/remove one client), accounted by Opacus RDP, Opacus
  PRV and dp-accounting PLD;
* fixed-size sampling of 10 of 50 without replacement (replace-one), accounted as fedlab does:
  dp-accounting RDP at the release noise z * n / (2 m) = 0.5;
* the old "no amplification" curve: every client every round (q = 1), RDP.

The curves come from fedlab's accounting functions (fedlab.trackers.privacy.amplified /
accounting); a few points are recomputed with Opacus and dp-accounting directly and printed
beside them. Run from the repository root:

    .venv/bin/python experiments/privacy_utility/epsilon_over_rounds.py
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from matplotlib.figure import Figure

from fedlab.trackers.privacy.accounting import compute_epsilon
from fedlab.trackers.privacy.amplified import central_epsilon, release_noise

HERE = Path(__file__).resolve().parent
DELTA = 1e-5
POPULATION = 50
SAMPLE = 10
RATE = SAMPLE / POPULATION
Z = 1.0
ROUNDS = list(range(1, 101))
CHECK_ROUNDS = (1, 5, 30, 100)


def poisson(rounds: int, accountant: str) -> float:
    """fedlab's epsilon after ``rounds`` Poisson rounds at (Z, RATE)."""
    noise = release_noise("poisson", Z, SAMPLE, SAMPLE)
    return central_epsilon([noise] * rounds, "poisson", RATE, SAMPLE, POPULATION, DELTA, accountant)


def fixed(rounds: int) -> float:
    """fedlab's epsilon after ``rounds`` fixed-size rounds (10 of 50, all answering)."""
    noise = release_noise("fixed", Z, SAMPLE, SAMPLE)
    return central_epsilon([noise] * rounds, "fixed", RATE, SAMPLE, POPULATION, DELTA, "rdp")


def unamplified(rounds: int) -> float:
    """The old claim: a Gaussian of multiplier Z every round, no sampling (q = 1)."""
    return compute_epsilon([(Z, 1.0, rounds)], DELTA, "rdp")


def direct(rounds: int) -> dict[str, float]:
    """The same quantities from Opacus and dp-accounting directly (no fedlab code)."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant
    from dp_accounting.rdp import RdpAccountant
    from opacus.accountants import PRVAccountant, RDPAccountant

    out: dict[str, float] = {}
    rdp = RDPAccountant()
    rdp.history = [(Z, RATE, rounds)]
    out["poisson rdp"] = rdp.get_epsilon(delta=DELTA)
    prv = PRVAccountant()
    prv.history = [(Z, RATE, rounds)]
    out["poisson prv"] = prv.get_epsilon(delta=DELTA, eps_error=0.01)
    pld = PLDAccountant()
    pld.compose(dp_accounting.PoissonSampledDpEvent(RATE, dp_accounting.GaussianDpEvent(Z)), rounds)
    out["poisson pld"] = pld.get_epsilon(DELTA)
    wor = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        POPULATION, SAMPLE, dp_accounting.GaussianDpEvent(Z * SAMPLE / (2 * SAMPLE))
    )
    wor.compose(event, rounds)
    out["fixed rdp"] = wor.get_epsilon(DELTA)
    full = RdpAccountant()
    full.compose(dp_accounting.GaussianDpEvent(Z), rounds)
    out["q=1 rdp"] = full.get_epsilon(DELTA)
    return {k: float(v) for k, v in out.items()}


def main() -> None:
    warnings.simplefilter("ignore")
    curves: dict[str, list[float]] = {}
    series = {
        "poisson rdp": lambda r: poisson(r, "rdp"),
        "poisson prv": lambda r: poisson(r, "prv"),
        "poisson pld": lambda r: poisson(r, "pld"),
        "fixed rdp": fixed,
        "q=1 rdp": unamplified,
    }
    for name, fn in series.items():
        start = time.perf_counter()
        curves[name] = [fn(r) for r in ROUNDS]
        print(f"{name:12s} computed in {time.perf_counter() - start:.1f} s")

    print(f"\ncross-check (delta {DELTA:g}): fedlab / direct (Opacus, dp-accounting)")
    print(f"{'rounds':>6s} " + " ".join(f"{k:>21s}" for k in series))
    for r in CHECK_ROUNDS:
        ref = direct(r)
        cells = [f"{curves[k][r - 1]:9.3f} / {ref[k]:9.3f}" for k in series]
        print(f"{r:6d} " + " ".join(f"{c:>21s}" for c in cells))

    labels = {
        "poisson rdp": "Poisson q = 0.2, RDP (Opacus)",
        "poisson prv": "Poisson q = 0.2, PRV (Opacus)",
        "poisson pld": "Poisson q = 0.2, PLD (dp-accounting)",
        "fixed rdp": "fixed 10 of 50, replace-one, RDP (dp-accounting)",
        "q=1 rdp": "no amplification (q = 1), RDP",
    }
    styles = {
        "poisson rdp": "-",
        "poisson prv": "--",
        "poisson pld": ":",
        "fixed rdp": "-.",
        "q=1 rdp": "-",
    }
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    for name in series:
        ax.plot(ROUNDS, curves[name], styles[name], label=labels[name], linewidth=1.8)
    ax.set_yscale("log")
    ax.set_xlabel("rounds (server aggregations)")
    ax.set_ylabel("epsilon at delta = 1e-5 (log scale)")
    ax.set_title("User-level DP-FedAvg, 50 clients, z = 1: epsilon over rounds per accountant")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    out = HERE / "epsilon_over_rounds.png"
    fig.savefig(out, dpi=120)
    print(f"\nwrote {out}")
    for name in series:
        print(
            f"{name:12s} rounds 1/5/30/100: "
            + " / ".join(f"{curves[name][r - 1]:.2f}" for r in CHECK_ROUNDS)
        )


if __name__ == "__main__":
    main()
