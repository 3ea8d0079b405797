"""Carbon as a tracker: the host's measured energy per round, split among clients, plus the
modelled energy of communication, at each region's intensity (docs/carbon.md).

It is built before the engine starts so that CodeCarbon's measurement covers the whole run,
start-up included; each round is one CodeCarbon task from the end of the previous round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from fedlab.config.clock import format_utc
from fedlab.trackers.base import LedgerTracker, Objective, RoundContext, RunContext

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment


class CarbonTracker(LedgerTracker):
    """Energy and emissions of the run (``carbon`` group); inactive with ``carbon=off``."""

    name = "carbon"
    round_columns = ("energy_kwh", "emissions_kg", "compute_kg", "communication_kg")
    client_columns = (
        "region", "energy_kwh", "emissions_kg", "warmup_cpu_s", "sim_start_utc", "sim_end_utc"
    )
    #: A process's one-time warm-up, reported apart from the client's own CPU seconds: it is
    #: overhead, charged to no client (fedlab.fl.training.warm_up).
    reply_metrics: ClassVar[Mapping[str, str]] = {"warmup-cpu-s": "warmup_cpu_s"}
    report_module = "fedlab.trackers.carbon.report"
    objectives = (
        Objective("energy_kwh", (("carbon", "energy_kwh"),), unit="kWh", header="kWh",
                  measured=True),
        Objective("emissions_kg", (("carbon", "emissions_kg"),), unit="kgCO2e",
                  header="kgCO2e", front="carbon", axis="emissions (kgCO2e)", measured=True),
        Objective("compute_kg", (("carbon", "compute_kg"),), unit="kgCO2e",
                  header="compute kg", measured=True),
        Objective("communication_kg", (("carbon", "communication_kg"),), unit="kgCO2e",
                  header="comm kg"),
    )

    @classmethod
    def columns(cls, kind: str, exp: Experiment) -> tuple[str, ...]:
        """Besides the fixed columns, per round each region's actual and forecast intensity
        over the round (``intensity_<REGION>``, ``forecast_<REGION>``, gCO2e/kWh): the
        clients' regions and the host's."""
        fixed = super().columns(kind, exp)  # type: ignore[arg-type]
        if kind != "round" or not exp.cfg.carbon.enabled:
            return fixed
        from fedlab.fl.clock import needed_regions

        regions = needed_regions(exp.cfg, exp.regions())
        return (*fixed, *(f"{p}_{r}" for r in regions for p in ("intensity", "forecast")))

    @classmethod
    def check(cls, exp: Experiment) -> None:
        from fedlab.trackers.carbon.checks import check_carbon
        from fedlab.trackers.devices.profiles import client_links

        cfg = exp.cfg
        # carbon-aware selection reads the regions even when measurement is off
        if cfg.carbon.enabled or cfg.strategy.selection == "carbon_aware":
            device_links = None
            if cfg.carbon.enabled and cfg.devices.enabled:  # carbon charges the devices' links
                device_links = client_links(cfg.devices, cfg.num_clients, cfg.seed)
            library = cfg.devices.profiles.links
            check_carbon(
                cfg.carbon, cfg.num_clients, cfg.seed, library=library, device_links=device_links
            )

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> CarbonTracker | None:
        from fedlab.fl.clock import needed_regions
        from fedlab.trackers.carbon.accounting import RunCarbon

        exp = run.exp
        if not exp.cfg.carbon.enabled:
            return None
        fleet = exp.fleet(run.fed)
        carbon = RunCarbon(
            exp.cfg.carbon,
            run.run_dir,
            exp.regions(),
            exp.grid(),
            exp.cfg.seed,
            links=None if fleet is None else [link.name for link in fleet.links],
            library=exp.cfg.devices.profiles.links,
        )
        tracker = cls(carbon)
        tracker.regions = needed_regions(exp.cfg, exp.regions())
        return tracker

    @classmethod
    def inactive_summary(cls, exp: Experiment) -> dict[str, Any]:
        keys = ("energy_kwh", "emissions_kg", "compute_kg", "communication_kg", "server_kg")
        return dict.fromkeys(keys)

    def start_round(self, server_round: int) -> None:
        self.ledger.start_round(server_round)

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        from fedlab.fl.clock import client_windows

        r = ctx.server_round
        time = ctx.clock.round_time(r)
        windows = client_windows(ctx.clock, r, ctx.tally.rows)
        columns, per_client = self.ledger.end_round(
            r, ctx.tally.rows, (time.start_s, time.end_s), windows
        )
        grid = self.ledger.ledger.grid
        for row in ctx.tally.rows:  # each client's share, on its first row
            row.update(per_client.pop(row["client"], {}))
            if grid.dated:
                a, b = windows[int(row["client"])]
                row.update(sim_start_utc=format_utc(grid.epoch(a)),
                           sim_end_utc=format_utc(grid.epoch(b)))
        issued = time.start_s - time.wait_s  # a policy decides when the previous round ends
        for region in self.regions:
            columns[f"intensity_{region}"] = grid.actual(region, time.start_s, time.end_s)
            columns[f"forecast_{region}"] = grid.forecast(region, time.start_s, time.end_s, issued)
        return columns

    def final_fragment(self, section: Any) -> str | None:
        return f"{section['energy_kwh']:.3g} kWh | {1000 * section['emissions_kg']:.3g} gCO2e"

    def final_note(self, section: Any) -> str | None:
        """With clients in several regions, what each region's clients emit at their own grid
        (compute + communication, the FL view of Qiu et al.): the point of the run, which the
        host's single total does not show. None with one region (nothing to compare)."""
        regions = section["regions"]
        if len(regions) < 2:
            return None
        parts = [
            f"{code} {1000 * (t['compute_kg_client_grid'] + t['communication_kg']):.3g} "
            f"({t['clients']} clients, {t['intensity_g_per_kwh']:.3g} g/kWh)"
            for code, t in sorted(regions.items(), key=lambda item: item[1]["intensity_g_per_kwh"])
        ]
        return (
            "carbon by client region, gCO2e at the clients' grids (compute + communication): "
            f"{' | '.join(parts)} | total {1000 * section['client_grid_kg']:.3g}"
        )

    def close(self) -> dict[str, Any]:
        """Stop CodeCarbon: the final section covers the whole run, start-up included."""
        section = self.ledger.summary(self.ledger.stop())
        self.ledger.save_ledger()
        return section
