"""The privacy tracker's part of the reports, written from the run record alone.

A card must not claim more than the accountant recorded: a guarantee is stated only with
the ε and δ in ``results.privacy``, and a DP run without them says that no guarantee can
be stated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedlab.record.reader import Run, number, shown


def _sci(value: float) -> str:
    """``1e-05`` as ``1e-5``: how δ is written in papers."""
    mantissa, _, exponent = f"{value:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def privacy_statement(privacy: Mapping[str, Any]) -> str:
    """The run's privacy guarantee in plain words, from the accountant's record only."""
    mode = privacy.get("mode") or "none"
    if mode == "none":
        return (
            "No formal privacy guarantee: training did not use differential privacy. "
            "Raw data stayed on the clients, but model updates can still reveal information "
            "about it."
        )
    epsilon, delta = number(privacy.get("epsilon")), number(privacy.get("delta"))
    if epsilon is None or delta is None:
        return (
            f"Differential privacy was configured ({mode}) but the record holds no ε and δ, "
            "so no guarantee can be stated."
        )
    unit = privacy.get("unit")
    whom = {
        "record": "record-level DP for each client's examples",
        "user": "user-level DP for each client's whole data set",
    }.get(str(unit), f"{unit}-level DP")
    accountant = privacy.get("accountant")
    via = f", {str(accountant).upper()} accountant" if accountant else ""
    return f"(ε={epsilon:.3g}, δ={_sci(delta)}) {whom}{via}."


def card_section(run: Run) -> str:
    """The model card's "Privacy" section: the statement, then the DP settings if any."""
    privacy = run.section("privacy")
    lines = ["## Privacy", "", privacy_statement(privacy)]
    if (privacy.get("mode") or "none") != "none":
        guarantee = privacy.get("guarantee")
        lines += [
            "",
            f"- Mode: {privacy.get('mode')} (unit: {privacy.get('unit') or 'n/a'})",
            f"- Noise multiplier {shown(privacy.get('noise_multiplier'), '.3g')}, clipping norm "
            f"{shown(privacy.get('max_grad_norm'), '.3g')}",
        ]
        lines += [f"- As the run states it: {guarantee}"] if guarantee else []
        if privacy.get("client_sampling"):
            lines.append(
                f"- Client sampling: {privacy['client_sampling']} (rate "
                f"{shown(privacy.get('client_sampling_rate'), '.3g')}), neighbouring relation: "
                f"{privacy.get('neighbouring_relation')}; mechanism: {privacy.get('mechanism')}"
            )
        if privacy.get("budget_exhausted"):
            stop = privacy["budget_exhausted"]
            lines.append(
                f"- Stopped by the privacy budget ε={shown(privacy.get('budget_epsilon'), '.3g')} "
                f"after round {stop['round']} (ε={shown(stop['epsilon'], '.3g')})"
            )
        audit = privacy.get("audit")
        if audit:
            lines.append(
                f"- Audit ({audit['method']}): empirical lower bound ε >= "
                f"{shown(audit['epsilon_lower_bound'], '.3g')} at {audit['confidence']:.0%} "
                f"confidence ({audit['correct']}/{audit['guesses']} canary guesses right) beside "
                f"the accountant's ε={shown(audit['epsilon_claimed'], '.3g')}. This is a check "
                "of the accountant, not a proof that the claimed ε holds."
            )
    return "\n".join(lines)
