"""One run's carbon accounting as the server drives it: a CodeCarbon task per round, the
ledger's rows, and the record's ``carbon`` section (docs/carbon.md)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlab.trackers.carbon.grid import GridIntensity
from fedlab.trackers.carbon.host import HostTracker, host_energy_measured
from fedlab.trackers.carbon.intensity import carbon_intensity, intensity_data_year
from fedlab.trackers.carbon.ledger import CarbonLedger
from fedlab.trackers.carbon.network import NetworkModel, assign_links
from fedlab.trackers.carbon.readings import RoundMeasurement, RunEnergy

#: The run directory's file holding the carbon ledger's rows.
LEDGER_FILE = "carbon_ledger.json"


class RunCarbon:
    """Carbon accounting of one run: host measurement per round plus the ledger.

    The server calls :meth:`start_round` when a round begins and :meth:`end_round` with the
    round's client rows when it ends; :meth:`stop` closes the tracker (so its total covers
    the whole run, start-up included) and :meth:`summary` gives the record's ``carbon``
    section. ``cfg`` is a :class:`fedlab.config.schema.CarbonConfig`, ``regions`` each
    client's region and ``grid`` their intensities on the simulated clock; ``links`` are the
    clients' links when simulated devices bring them (else ``carbon.links``), ``library`` the
    link table that prices them (``devices.profiles.links``; None: the packaged library).
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        regions: Sequence[str],
        grid: GridIntensity,
        seed: int,
        links: Sequence[str] | None = None,
        library: Mapping[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        network = NetworkModel.from_config(cfg.network, library)
        if links is None:  # simulated devices bring their own links
            links = assign_links(len(regions), cfg.links, network, seed)
        self.ledger = CarbonLedger(regions, cfg.country, network, links, grid)
        self.tracker = HostTracker(
            run_dir,
            cfg.country,
            measure_power_secs=cfg.measure_power_secs,
            tracking_mode=cfg.tracking_mode,
            force_cpu_power=cfg.force_cpu_power,
            force_ram_power=cfg.force_ram_power,
            pue=cfg.pue,
        )
        self._round: contextlib.ExitStack | None = None
        self._measurement: RoundMeasurement | None = None
        self._previous_outside = (0.0, 0.0)  # kWh, kg outside rounds in earlier attempts
        self._server_cpu0 = 0.0

    def start_round(self, server_round: int) -> None:
        """Begin measuring ``server_round`` (a CodeCarbon task)."""
        self._round = contextlib.ExitStack()
        self._measurement = self._round.enter_context(self.tracker.round(f"round_{server_round}"))
        self._server_cpu0 = time.process_time()

    def end_round(
        self,
        server_round: int,
        rows: Sequence[Mapping[str, Any]],
        window: tuple[float, float],
        client_windows: Mapping[int, tuple[float, float]] | None = None,
    ) -> tuple[dict[str, float], dict[int, dict[str, Any]]]:
        """Close the round; returns its ``rounds.csv`` columns and per-client columns.

        ``rows`` are the round's ``clients.csv`` rows: each client's reported CPU seconds
        (train and evaluate), its process's one-time warm-up (overhead) and the bytes it
        moved; ``window`` is the round's interval on the simulated clock and
        ``client_windows`` each client's (default: the round's).
        """
        server_cpu_s = time.process_time() - self._server_cpu0
        assert self._round is not None, "end_round without start_round"
        self._round.close()
        self._round = None
        cpu: dict[int, float] = {}
        warmup_cpu_s = math.fsum(float(r.get("warmup_cpu_s") or 0.0) for r in rows)
        moved: dict[int, tuple[int, int]] = {}
        for r in rows:
            cid = int(r["client"])
            cpu[cid] = cpu.get(cid, 0.0) + float(r.get("cpu_s") or 0.0)
            down, up = moved.get(cid, (0, 0))
            moved[cid] = (down + int(r.get("bytes_down") or 0), up + int(r.get("bytes_up") or 0))
        row = self.ledger.record_round(
            server_round,
            window=window,
            client_windows=client_windows,
            client_cpu_s=cpu,
            bytes_by_client=moved,
            host=self._measurement,
            power=self.tracker.power_model,
            server_cpu_s=server_cpu_s,
            warmup_cpu_s=warmup_cpu_s,
        )
        clients = {
            c["client_id"]: {
                "region": c["region"],
                "energy_kwh": c["compute_kwh"] + c["comm_kwh"],
                "emissions_kg": c["compute_kg"] + c["comm_kg"],
            }
            for c in self.ledger.client_rows
            if c["round"] == server_round
        }
        columns = {
            "energy_kwh": row["host_kwh"] + row["comm_kwh"],
            "emissions_kg": row["host_kg"] + row["comm_kg"],
            "compute_kg": math.fsum(
                c["compute_kg"] for c in self.ledger.client_rows if c["round"] == server_round
            ),
            "communication_kg": row["comm_kg"],
        }
        return columns, clients

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint: the ledger's rows and the energy measured
        outside rounds so far (start-up, gaps), earlier attempts of a resumed run included."""
        kwh, kg = self.tracker.outside_so_far()
        kg = self._outside_kg(kwh, kg)
        return {
            "ledger": self.ledger.state_dict(),
            "outside_kwh": self._previous_outside[0] + kwh,
            "outside_kg": self._previous_outside[1] + kg,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a resumed run: earlier rounds and earlier outside-round energy count.

        The energy spent between a killed process's last checkpoint and its death was never
        written anywhere and cannot be counted.
        """
        self.ledger.load_state_dict(state["ledger"])
        self._previous_outside = (float(state["outside_kwh"]), float(state["outside_kg"]))

    def _outside_kg(self, kwh: float, codecarbon_kg: float) -> float:
        """Emissions of the host's energy outside rounds (start-up, the gaps between rounds):
        CodeCarbon's at its annual intensity, or with a trace at the host's intensity at the
        clock's start (when the run is taken to start up)."""
        ledger = self.ledger
        if not ledger.grid.dated:
            return codecarbon_kg
        return kwh * ledger.grid.actual(ledger.host_region, 0.0) / 1000.0

    def save_ledger(self) -> None:
        """Write ``carbon_ledger.json``: every round's and client's kWh and interval on the
        simulated clock (the ledger's rows), what a replay charges again under another clock
        or grid (:mod:`fedlab.trackers.carbon.replay`)."""
        from fedlab.record.run_dir import write_json

        write_json(self.run_dir / LEDGER_FILE, self.state_dict())

    def stop(self) -> RunEnergy:
        """Stop measuring (closing a round left open by a failure); idempotent."""
        if self._round is not None:
            self._round.close()
            self._round = None
        return self.tracker.stop()

    def summary(self, run: RunEnergy | None = None) -> dict[str, Any]:
        """The ``carbon`` section of ``results.json`` (so far, or final with ``run``).

        ``host_kwh`` is CodeCarbon's measurement; it splits exactly into the clients'
        compute, the server's work and ``overhead`` (idle capacity, Ray, start-up: the
        residual of the attribution plus the time outside rounds). Communication is
        modelled on top of it, at each client's region intensity.
        """
        totals = self.ledger.totals()
        power = self.tracker.power_model
        compute_kg = math.fsum(
            r["compute_kg"] for r in self.ledger.client_rows if r["compute_kg"] is not None
        )
        host_kwh, host_kg = totals["host_kwh"], totals["host_kg"]
        overhead_kwh, overhead_kg = totals["residual_kwh"], totals["residual_kg"]
        if run is not None:  # the whole run, start-up and the time between rounds included
            outside_kwh = self._previous_outside[0] + run.outside_rounds.energy_kwh
            outside_kg = self._previous_outside[1] + self._outside_kg(
                run.outside_rounds.energy_kwh, run.outside_rounds.emissions_kg
            )
            host_kwh += outside_kwh
            host_kg += outside_kg
            overhead_kwh += outside_kwh
            overhead_kg += outside_kg
        grid, host = self.ledger.grid, self.ledger.host_region
        year = intensity_data_year(host) or "year n/a"
        host_g = carbon_intensity(host)
        if grid.dated and self.ledger.round_rows:  # the mean the rounds were charged at
            rows = self.ledger.round_rows
            host_g = math.fsum(r["host_intensity_g_per_kwh"] for r in rows) / len(rows)
        return {
            "energy_kwh": host_kwh + totals["comm_kwh"],
            "emissions_kg": host_kg + totals["comm_kg"],
            "host_kwh": host_kwh,
            "host_kg": host_kg,
            "compute_kwh": totals["clients_compute_kwh"],
            "compute_kg": compute_kg,
            "server_kwh": totals["server_kwh"],
            "server_kg": totals["server_kg"],
            "overhead_kwh": overhead_kwh,
            "overhead_kg": overhead_kg,
            # CPU seconds client processes spent warming up (PyTorch's first steps, imports):
            # in the overhead above, not in any client's compute.
            "warmup_cpu_s": totals["warmup_cpu_s"],
            "communication_kwh": totals["comm_kwh"],
            "communication_kg": totals["comm_kg"],
            # The FL view (Qiu et al.): the clients' compute in their own regions plus the
            # communication; what carbon-aware client selection can change in a simulation.
            "client_grid_kg": math.fsum(
                t["compute_kg_client_grid"] + t["comm_kg"] for t in totals["by_region"].values()
            ),
            "country": self.ledger.host_region,
            "intensity_g_per_kwh": host_g,
            "intensity_source": (
                f"{grid.kind} intensity traces ({grid.describe([host])['regions'][host]})"
                if grid.dated
                else f"CodeCarbon global_energy_mix.json ({year})"
            ),
            # where every region's intensities came from, what they measure, the forecast
            "intensity": grid.describe([host, *self.ledger.client_regions]),
            "power_model": (
                f"CodeCarbon {power.cpu_mode}: CPU {power.cpu_w_max:g} W at full load over "
                f"{power.threads} threads ({power.cpu_source}), RAM {power.ram_w_static:g} W, "
                f"PUE {power.pue:g}, tracking mode {power.tracking_mode}"
            ),
            "estimated": not host_energy_measured(power),
            "network_kwh_per_gb": dict(self.ledger.network.kwh_per_gb),
            "regions": {
                region: {
                    "clients": t["clients"],
                    "intensity_g_per_kwh": t["intensity_g_per_kwh"],
                    "bytes_down": t["bytes_down"],
                    "bytes_up": t["bytes_up"],
                    "compute_kwh": t["compute_kwh"],
                    "compute_kg": t["compute_kg"],
                    "compute_kg_client_grid": t["compute_kg_client_grid"],
                    "communication_kwh": t["comm_kwh"],
                    "communication_kg": t["comm_kg"],
                    "emissions_kg": t["compute_kg"] + t["comm_kg"],
                }
                for region, t in totals["by_region"].items()
            },
            "whole_run": run is not None,
        }
