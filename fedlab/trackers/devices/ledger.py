"""The device ledger: time, energy and emissions of what each client did on its device.

It prices the round that happened (who trained, how many local steps each reported, who was
dropped at the deadline or failed) from the fleet's model, and keeps only what the run's
totals need; the per-client rows themselves go into ``clients.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedlab.trackers.devices.fleet import Fleet, PhaseCost

#: Joules in a kWh.
J_PER_KWH = 3.6e6


def kwh(watts: float, seconds: float) -> float:
    """Energy in kWh of ``watts`` drawn for ``seconds``."""
    return watts * seconds / J_PER_KWH


class DeviceLedger:
    """Per-client-phase and per-round device rows of one run, with totals per device type.

    :meth:`record_round` takes the round's ``clients.csv`` rows (what happened: who trained,
    how many local steps each reported, who was dropped or failed) and adds each row's device
    columns; it returns the round's columns. Rows of earlier rounds live in the record;
    the ledger keeps only what its totals need, and :meth:`state_dict` carries that across a
    checkpoint.
    """

    def __init__(
        self,
        fleet: Fleet,
        # (client, start s, end s) -> the mean g/kWh of the client's region over that interval
        intensity: Callable[[int, float, float], float],
        count_idle: bool = True,
    ) -> None:
        self.fleet = fleet
        self.intensity = intensity
        self.count_idle = count_idle
        self.rounds: list[dict[str, Any]] = []
        self.by_device: dict[str, dict[str, float]] = {}

    def _client_columns(
        self, client: int, cost: PhaseCost, idle_s: float, g_per_kwh: float
    ) -> dict[str, Any]:
        device, link = self.fleet.devices[client], self.fleet.links[client]
        compute = kwh(device.active_w, cost.compute_s)
        transfer = kwh(link.transfer_w, cost.transfer_s)
        idle = kwh(device.idle_w, idle_s) if self.count_idle else 0.0
        energy = compute + transfer + idle
        return {
            "device": device.name,
            "device_link": link.name,
            "device_flops": cost.flops,
            "device_compute_s": cost.compute_s,
            "device_transfer_s": cost.transfer_s,
            "device_idle_s": idle_s if self.count_idle else 0.0,
            "device_compute_kwh": compute,
            "device_transfer_kwh": transfer,
            "device_idle_kwh": idle,
            "device_kwh": energy,
            "device_kg": energy * g_per_kwh / 1000.0,
        }

    def _cost(self, row: Mapping[str, Any], phase_s: float) -> PhaseCost:
        """What one ``clients.csv`` row's client did on its device."""
        client, fleet = int(row["client"]), self.fleet
        link = fleet.links[client]
        if row["phase"] == "evaluate":
            if row["status"] == "ok":
                return fleet.evaluate_cost(client)
            return PhaseCost(0.0, 0.0, link.seconds(fleet.model_bytes, 0))
        if row["status"] == "ok":
            return fleet.train_cost(client, int(row["local_steps"]))
        if row["status"] == "dropped":
            # Dropped at the deadline: it received the model and computed until the server
            # stopped waiting; that work is wasted but was spent.
            down = link.seconds(fleet.model_bytes, 0)
            compute_s = max(0.0, phase_s - down)
            flops = compute_s * fleet.devices[client].gflops * 1e9
            return PhaseCost(flops, compute_s, down)
        return PhaseCost(0.0, 0.0, link.seconds(fleet.model_bytes, 0))  # crashed on receipt

    def record_round(
        self,
        server_round: int,
        rows: Sequence[dict[str, Any]],
        start_s: float,
        phases: tuple[float, float],
        missed_deadline: int = 0,
    ) -> dict[str, Any]:
        """Add device columns to the round's client ``rows`` (in place); return round columns.

        ``start_s`` is the round's start on the simulated clock, ``phases`` its (training,
        evaluation) seconds from the scheduler's clock, ``missed_deadline`` how many sampled
        clients the deadline made stragglers.
        """
        total: dict[str, float] = dict.fromkeys(
            ("flops", "compute_kwh", "transfer_kwh", "idle_kwh", "kwh", "kg"), 0.0
        )
        for row in rows:
            phase_s = phases[0] if row["phase"] == "train" else phases[1]
            client = int(row["client"])
            cost = self._cost(row, phase_s)
            idle_s = max(0.0, phase_s - cost.busy_s) if row["status"] == "ok" else 0.0
            # a device draws its energy over the phase it took part in (fedlab.fl.clock)
            a_s = start_s if row["phase"] == "train" else start_s + phases[0]
            g_per_kwh = self.intensity(client, a_s, a_s + phase_s)
            columns = self._client_columns(client, cost, idle_s, g_per_kwh)
            row.update(columns)
            for key in total:
                total[key] += columns[f"device_{key}"]
            kind = self.by_device.setdefault(
                columns["device"],
                dict.fromkeys(("flops", "compute_s", "transfer_s", "kwh", "kg"), 0.0),
            )
            kind["flops"] += cost.flops
            kind["compute_s"] += cost.compute_s
            kind["transfer_s"] += cost.transfer_s
            kind["kwh"] += columns["device_kwh"]
            kind["kg"] += columns["device_kg"]
        summary = {
            "round": server_round,
            "sim_start_s": start_s,
            "sim_train_s": phases[0],
            "sim_evaluate_s": phases[1],
            "sim_duration_s": phases[0] + phases[1],
            "clients_missed_deadline": missed_deadline,
            **{f"edge_{k}": v for k, v in total.items()},
        }
        self.rounds.append(summary)
        return summary

    def summary(self) -> dict[str, Any]:
        """The ``devices`` section of ``results.json``."""
        fleet = self.fleet
        counts: dict[str, int] = {}
        for device in fleet.devices:
            counts[device.name] = counts.get(device.name, 0) + 1
        last = self.rounds[-1] if self.rounds else None

        def total(key: str) -> float:
            return math.fsum(r[key] for r in self.rounds)

        return {
            "edge_kwh": total("edge_kwh"),
            "edge_kg": total("edge_kg"),
            "edge_compute_kwh": total("edge_compute_kwh"),
            "edge_transfer_kwh": total("edge_transfer_kwh"),
            "edge_idle_kwh": total("edge_idle_kwh"),
            "flops": total("edge_flops"),
            "sim_time_s": last["sim_start_s"] + last["sim_duration_s"] if last else 0.0,
            "clients_missed_deadline": int(total("clients_missed_deadline")),
            "train_flops_per_example": fleet.train_flops,
            "eval_flops_per_example": fleet.eval_flops,
            "model_bytes": fleet.model_bytes,
            "count_idle": self.count_idle,
            "clients": counts,
            "by_device": {
                name: {"clients": counts.get(name, 0), **values}
                for name, values in sorted(self.by_device.items())
            },
            "profiles": {
                d.name: {
                    "gflops": d.gflops,
                    "active_w": d.active_w,
                    "idle_w": d.idle_w,
                    "source": d.source,
                }
                for d in sorted(set(fleet.devices), key=lambda d: d.name)
            },
            "links": {
                k.name: {
                    "down_mbps": k.down_mbps,
                    "up_mbps": k.up_mbps,
                    "transfer_w": k.transfer_w,
                    "source": k.source,
                }
                for k in sorted(set(fleet.links), key=lambda k: k.name)
            },
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint: the round summaries and per-device totals."""
        return {"rounds": [dict(r) for r in self.rounds], "by_device": self.by_device}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a resumed run's totals."""
        self.rounds = [dict(r) for r in state["rounds"]]
        self.by_device = {k: dict(v) for k, v in state["by_device"].items()}
