"""Simulated edge devices as a tracker: what the clients' own devices would spend.

The schedule already knows every client's device (its clock decides deadline stragglers
before a round); this tracker prices what actually happened in each round: device time,
energy and emissions per client and phase, from the FLOP-counted work and metered bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fedlab.trackers.base import LedgerTracker, Objective, RoundContext, RunContext

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment


class DevicesTracker(LedgerTracker):
    """Edge-device time and energy (``devices`` group); inactive with ``devices=none``."""

    name = "devices"
    round_columns = (
        "sim_start_s",
        "sim_duration_s",
        "clients_missed_deadline",
        "edge_kwh",
        "edge_kg",
    )
    client_columns = (
        "device",
        "device_link",
        "device_flops",
        "device_compute_s",
        "device_transfer_s",
        "device_idle_s",
        "device_compute_kwh",
        "device_transfer_kwh",
        "device_idle_kwh",
        "device_kwh",
        "device_kg",
    )
    report_module = "fedlab.trackers.devices.report"
    objectives = (
        Objective("edge_kwh", (("devices", "edge_kwh"),), unit="kWh", header="edge kWh",
                  optional=True),
        Objective("edge_kg", (("devices", "edge_kg"),), unit="kgCO2e", header="edge kgCO2e",
                  front="edge", axis="simulated edge-device emissions (kgCO2e)", optional=True),
        Objective("sim_time_s", (("devices", "sim_time_s"),), unit="s", header="sim time s",
                  fmt=".1f", optional=True),
    )

    @classmethod
    def check(cls, exp: Experiment) -> None:
        from fedlab.trackers.devices.checks import check_devices

        if exp.cfg.devices.enabled:
            check_devices(exp.cfg)

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> DevicesTracker | None:
        from fedlab.trackers.devices.ledger import DeviceLedger

        exp = run.exp
        if not exp.cfg.devices.enabled:
            return None
        fleet = exp.fleet(run.fed)
        ledger = DeviceLedger(fleet, exp.region_intensity(), exp.cfg.devices.count_idle)
        return cls(ledger, exp.cfg.devices.deadline_s)

    def __init__(self, ledger: Any, deadline_s: float | None = None) -> None:
        super().__init__(ledger)
        self.deadline_s = deadline_s

    def summary(self) -> dict[str, Any]:
        """The ledger's section, with the deadline it was run against (null for none)."""
        return {**self.ledger.summary(), "deadline_s": self.deadline_s}

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        r = ctx.server_round
        columns = self.ledger.record_round(
            r,
            ctx.tally.rows,
            ctx.clock.round_start_s(r),
            ctx.clock.phases_s(r),
            len(ctx.tally.plan.missed_deadline),
        )
        return {k: columns[k] for k in self.round_columns}

    def console(self, row: Mapping[str, Any]) -> str | None:
        text = f"edge {row['sim_start_s'] + row['sim_duration_s']:.2f} s sim"
        missed = row["clients_missed_deadline"]
        return f"{text}, {missed} missed deadline" if missed else text

    def final_note(self, section: Any) -> str | None:
        """Device time and energy, and what a deadline did: a run that shows none of it on
        the console looks as if ``devices.deadline_s`` had no effect."""
        deadline = section["deadline_s"]
        missed = (
            f"; {section['clients_missed_deadline']} client-rounds missed the {deadline:g} s "
            "deadline"
            if deadline is not None
            else ""
        )
        devices = ", ".join(f"{n} {name}" for name, n in sorted(section["clients"].items()))
        return (
            f"devices ({devices}): {section['sim_time_s']:.3g} s simulated, "
            f"{section['edge_kwh']:.3g} kWh, {1000 * section['edge_kg']:.3g} gCO2e on the "
            f"devices{missed}"
        )
