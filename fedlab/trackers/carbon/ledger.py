"""The carbon ledger of one run: a row per round and per participating client, and totals.

Client compute is charged at the *host's* intensity (that is where the electricity was drawn,
and the number that adds up with the measured total), communication at the *client's* region
intensity. Each energy is drawn over an interval of the simulated clock (the round, or the
client's phase of it) and charged at the intensity's mean over that interval
(:class:`~fedlab.trackers.carbon.grid.GridIntensity`). Rows are plain JSON so a checkpoint
carries them across a restart, and hold every kWh and interval, so a replay
(:mod:`fedlab.trackers.carbon.replay`) can charge them again under another clock; totals are
always recomputed from the rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedlab.trackers.carbon.attribution import Attribution, PowerModel, attribute_round
from fedlab.trackers.carbon.grid import GridIntensity
from fedlab.trackers.carbon.intensity import carbon_intensity, kg_from_kwh, normalise_code
from fedlab.trackers.carbon.network import NetworkModel
from fedlab.trackers.carbon.readings import EnergyReading, RoundMeasurement

_LEDGER_VERSION = 2  # 2: intervals (sim_start_s, sim_end_s) replace sim_time_s
_SERVER = "server"


def _client_part(cid: int) -> str:
    return f"client_{cid}"


class CarbonLedger:
    """Per-round and per-client carbon rows of one run, with per-region totals.

    Record each round with :meth:`record_round`. Row fields (all JSON-able):

    * round rows: measured host energy (total/cpu/ram/gpu kWh, kg), the intensity
      CodeCarbon applied, server and residual (idle/overhead) energy and emissions, the
      attribution ``scale``, and the round's communication totals;
    * client rows: region, link, CPU seconds, ``compute_kwh``; ``compute_kg`` at the
      **host's** intensity (where the electricity was actually drawn: this is the number
      that adds up with the measured total); ``compute_kg_client_grid`` at the client's
      region intensity (what the same compute would emit in the client's region: the
      federated-learning view of Qiu et al.); bytes down/up, ``comm_kwh`` and
      ``comm_kg`` (at the client's region intensity, hourly if a profile is given).

    Without a host measurement (``host=None``) the compute fields are None and only
    communication is accounted. :meth:`state_dict`/:meth:`load_state_dict` carry the rows
    across a checkpoint/restart; totals are always recomputed from the rows.
    """

    def __init__(
        self,
        client_regions: Sequence[str],
        host_region: str,
        network: NetworkModel | None = None,
        client_links: str | Sequence[str] = "wired",
        grid: GridIntensity | None = None,
    ):
        self.client_regions = [normalise_code(r) for r in client_regions]
        self.host_region = normalise_code(host_region)
        self.network = network if network is not None else NetworkModel()
        if isinstance(client_links, str):
            client_links = [client_links] * len(self.client_regions)
        if len(client_links) != len(self.client_regions):
            raise ValueError(
                f"{len(client_links)} client links for {len(self.client_regions)} clients"
            )
        self.client_links = [self.network.check_link(link) for link in client_links]
        self.grid = grid if grid is not None else GridIntensity()
        self.round_rows: list[dict[str, Any]] = []
        self.client_rows: list[dict[str, Any]] = []

    @property
    def num_clients(self) -> int:
        """Number of clients the ledger knows regions for."""
        return len(self.client_regions)

    def _check_client(self, cid: int) -> int:
        if not isinstance(cid, int) or not 0 <= cid < self.num_clients:
            raise ValueError(f"unknown client id {cid!r} (ids 0..{self.num_clients - 1})")
        return cid

    def record_round(
        self,
        server_round: int,
        *,
        window: tuple[float, float],
        client_cpu_s: Mapping[int, float],
        bytes_by_client: Mapping[int, tuple[int, int]],
        host: RoundMeasurement | EnergyReading | None = None,
        power: PowerModel | None = None,
        server_cpu_s: float = 0.0,
        warmup_cpu_s: float = 0.0,
        client_windows: Mapping[int, tuple[float, float]] | None = None,
    ) -> dict[str, Any]:
        """Account one round; return its round row.

        ``client_cpu_s``: CPU seconds each participating client reported (train +
        evaluate). ``bytes_by_client``: ``(bytes_down, bytes_up)`` per client.
        ``host``/``power``: the round's :class:`HostTracker` measurement and power model,
        or None when carbon tracking is off. ``window``: the round's (start, end) on the
        simulated clock, over which the host's energy is drawn; ``client_windows``: each
        client's own interval (default: the round's). ``warmup_cpu_s``: the client
        processes' one-time warm-up this round, recorded but charged to no part (it stays in
        the residual, as overhead).
        """
        if any(row["round"] == server_round for row in self.round_rows):
            raise ValueError(f"round {server_round} already recorded")
        reading = host.reading if isinstance(host, RoundMeasurement) else host
        if isinstance(host, RoundMeasurement) and reading is None:
            raise ValueError(f"round {host.name!r} has no reading yet (record after the block)")
        if reading is not None and power is None:
            raise ValueError("a host measurement needs the PowerModel to attribute it")
        cids = sorted({self._check_client(c) for c in (*client_cpu_s, *bytes_by_client)})

        attribution: Attribution | None = None
        start_s, end_s = window
        applied = None
        if reading is not None and power is not None:
            rate = power.kwh_per_cpu_second(reading.ram_w)
            seconds = {_SERVER: float(server_cpu_s)}
            seconds.update({_client_part(c): float(client_cpu_s.get(c, 0.0)) for c in cids})
            attribution = attribute_round(reading.energy_kwh, seconds, rate)
            applied = reading.intensity_g_per_kwh()

        clients: list[dict[str, Any]] = []
        for cid in cids:
            down, up = bytes_by_client.get(cid, (0, 0))
            a_s, b_s = (client_windows or {}).get(cid, window)
            clients.append(
                {
                    "round": server_round,
                    "client_id": cid,
                    "region": self.client_regions[cid],
                    "link": self.client_links[cid],
                    "cpu_s": float(client_cpu_s.get(cid, 0.0)),
                    "compute_kwh": (
                        attribution.parts_kwh[_client_part(cid)] if attribution else None
                    ),
                    "sim_start_s": float(a_s),
                    "sim_end_s": float(b_s),
                    "bytes_down": int(down),
                    "bytes_up": int(up),
                    "comm_kwh": self.network.energy_kwh(down + up, self.client_links[cid]),
                }
            )
        row: dict[str, Any] = {
            "round": server_round,
            "sim_start_s": float(start_s),
            "sim_end_s": float(end_s),
            "measured": attribution is not None,
            "host_region": self.host_region,
            "codecarbon_g_per_kwh": applied,  # the intensity CodeCarbon applied (static)
            "codecarbon_kg": reading.emissions_kg if reading else None,
            "duration_s": reading.duration_s if reading else None,
            "host_kwh": reading.energy_kwh if reading else None,
            "host_cpu_kwh": reading.cpu_kwh if reading else None,
            "host_ram_kwh": reading.ram_kwh if reading else None,
            "host_gpu_kwh": reading.gpu_kwh if reading else None,
            "server_cpu_s": float(server_cpu_s),
            "warmup_cpu_s": float(warmup_cpu_s),
            "server_kwh": attribution.parts_kwh[_SERVER] if attribution else None,
            "clients_compute_kwh": (
                math.fsum(v for k, v in attribution.parts_kwh.items() if k != _SERVER)
                if attribution
                else None
            ),
            "residual_kwh": attribution.residual_kwh if attribution else None,
            "attribution_scale": attribution.scale if attribution else None,
        }
        self._charge(row, clients)
        self.client_rows.extend(clients)
        self.round_rows.append(row)
        return row

    def _charge(self, row: dict[str, Any], clients: list[dict[str, Any]]) -> None:
        """Fill a round's intensities and emissions (in place) from its kWh and intervals.

        The one rule for them, for a live round and for a replay alike: the host's energy at
        the host's intensity over the round (CodeCarbon's own figure with static
        intensities, as measured), each client's compute at the host's intensity over the
        client's interval and, for the FL view, at its own region's; its communication at its
        region's.
        """
        start_s, end_s = row["sim_start_s"], row["sim_end_s"]
        applied = row["codecarbon_g_per_kwh"]
        host_g = self.grid.actual(self.host_region, start_s, end_s)
        if applied is not None and not self.grid.dated:
            host_g = applied
        row["host_intensity_g_per_kwh"] = host_g
        measured = row["host_kwh"] is not None
        row["host_kg"] = (
            None if not measured
            else kg_from_kwh(row["host_kwh"], host_g) if self.grid.dated
            else row["codecarbon_kg"]
        )
        for key in ("server", "residual"):
            kwh = row[f"{key}_kwh"]
            row[f"{key}_kg"] = None if kwh is None else kg_from_kwh(kwh, host_g)
        for c in clients:
            a_s, b_s = c["sim_start_s"], c["sim_end_s"]
            client_g = self.grid.actual(c["region"], a_s, b_s)
            c["client_intensity_g_per_kwh"] = client_g
            c["comm_kg"] = kg_from_kwh(c["comm_kwh"], client_g)
            kwh = c["compute_kwh"]
            c["compute_kg"] = None if kwh is None else kg_from_kwh(
                kwh, self._host_g(host_g, a_s, b_s)
            )
            c["compute_kg_client_grid"] = None if kwh is None else kg_from_kwh(kwh, client_g)
        row["comm_kwh"] = math.fsum(c["comm_kwh"] for c in clients)
        row["comm_kg"] = math.fsum(c["comm_kg"] for c in clients)

    def recharged(
        self,
        grid: GridIntensity,
        windows: Mapping[int, tuple[float, float]],
        client_windows: Mapping[int, Mapping[int, tuple[float, float]]],
        regions: Sequence[str] | None = None,
        host_region: str | None = None,
    ) -> CarbonLedger:
        """The same energy charged again on another clock or grid: a copy whose rounds lie
        at ``windows`` (round -> interval), its clients at ``client_windows``, with
        ``grid``'s intensities (and other ``regions`` / ``host_region`` if given). What a
        replay of a finished run computes (:mod:`fedlab.trackers.carbon.replay`)."""
        out = CarbonLedger(
            regions or self.client_regions, host_region or self.host_region, self.network,
            self.client_links, grid,
        )
        for row in self.round_rows:
            r = row["round"]
            copy = {**row, "host_region": out.host_region}
            copy["sim_start_s"], copy["sim_end_s"] = windows[r]
            clients = []
            for c in self.client_rows:
                if c["round"] == r:
                    a_s, b_s = client_windows[r][c["client_id"]]
                    region = out.client_regions[c["client_id"]]
                    clients.append({**c, "region": region, "sim_start_s": a_s, "sim_end_s": b_s})
            out._charge(copy, clients)
            out.round_rows.append(copy)
            out.client_rows.extend(clients)
        return out

    def _host_g(self, round_g: float, a_s: float, b_s: float) -> float:
        """The host's intensity over a client's interval: a trace's mean over it, else the
        round's (static values do not change within a round)."""
        return self.grid.actual(self.host_region, a_s, b_s) if self.grid.dated else round_g

    # -- totals --------------------------------------------------------------------

    def totals_by_region(self) -> dict[str, dict[str, Any]]:
        """Per client region: clients, bytes, compute and communication energy/emissions."""
        out: dict[str, dict[str, Any]] = {}
        for region in sorted(set(self.client_regions)):
            rows = [r for r in self.client_rows if r["region"] == region]
            measured = [r for r in rows if r["compute_kwh"] is not None]
            out[region] = {
                "clients": sum(1 for r in self.client_regions if r == region),
                "intensity_g_per_kwh": self._region_intensity(region, rows),
                "cpu_s": math.fsum(r["cpu_s"] for r in rows),
                "bytes_down": sum(r["bytes_down"] for r in rows),
                "bytes_up": sum(r["bytes_up"] for r in rows),
                "compute_kwh": math.fsum(r["compute_kwh"] for r in measured),
                "compute_kg": math.fsum(r["compute_kg"] for r in measured),
                "compute_kg_client_grid": math.fsum(r["compute_kg_client_grid"] for r in measured),
                "comm_kwh": math.fsum(r["comm_kwh"] for r in rows),
                "comm_kg": math.fsum(r["comm_kg"] for r in rows),
            }
        return out

    def _region_intensity(self, region: str, rows: Sequence[Mapping[str, Any]]) -> float:
        """A region's intensity for the totals: its annual value, or with a trace the mean of
        the intensities its clients' rows were charged at."""
        if not self.grid.dated or not rows:
            return carbon_intensity(region)
        return math.fsum(r["client_intensity_g_per_kwh"] for r in rows) / len(rows)

    def totals(self) -> dict[str, Any]:
        """Run totals: host measurement, its split, communication, and per region."""
        measured = [r for r in self.round_rows if r["measured"]]

        def total(key: str, rows: list[dict[str, Any]]) -> float:
            return math.fsum(r[key] for r in rows)

        return {
            "rounds": len(self.round_rows),
            "rounds_measured": len(measured),
            "host_region": self.host_region,
            "host_kwh": total("host_kwh", measured),
            "host_kg": total("host_kg", measured),
            "server_kwh": total("server_kwh", measured),
            "server_kg": total("server_kg", measured),
            "clients_compute_kwh": total("clients_compute_kwh", measured),
            "residual_kwh": total("residual_kwh", measured),
            "residual_kg": total("residual_kg", measured),
            "comm_kwh": total("comm_kwh", self.round_rows),
            "comm_kg": total("comm_kg", self.round_rows),
            # rows of checkpoints written before warm-up was recorded have none
            "warmup_cpu_s": math.fsum(r.get("warmup_cpu_s", 0.0) for r in self.round_rows),
            "by_region": self.totals_by_region(),
        }

    # -- checkpointing -------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: configuration fingerprint plus all rows."""
        return {
            "version": _LEDGER_VERSION,
            "client_regions": list(self.client_regions),
            "client_links": list(self.client_links),
            "host_region": self.host_region,
            "network_kwh_per_gb": dict(self.network.kwh_per_gb),
            "round_rows": [dict(r) for r in self.round_rows],
            "client_rows": [dict(r) for r in self.client_rows],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore rows saved by :meth:`state_dict`.

        Refuses a state from a differently configured run (regions, links, host region or
        network model), since its rows would not add up with the new ones.
        """
        if state.get("version") != _LEDGER_VERSION:
            raise ValueError(f"unsupported ledger state version {state.get('version')!r}")
        mine = self.state_dict()
        for key in ("client_regions", "client_links", "host_region", "network_kwh_per_gb"):
            if state.get(key) != mine[key]:
                raise ValueError(f"ledger state does not match this run's {key}")
        self.round_rows = [dict(r) for r in state["round_rows"]]
        self.client_rows = [dict(r) for r in state["client_rows"]]
