"""Simulated edge devices: what the clients' work would cost on phones, boards and laptops.

A simulation runs every client on the researcher's machine, so the energy CodeCarbon measures
is that machine's. This module answers the question the study is about instead: how long
and how much energy would each client's round take on *its* device (Qiu et al., JMLR 2023,
measured FL on real edge hardware for this reason)? The model, every step of it checked by
``tests/test_devices.py`` against hand arithmetic:

* **work** is counted in a hardware-neutral unit: FLOPs per example, from PyTorch's own
  ``FlopCounterMode`` over one forward and backward pass of the run's model (forward only for
  evaluation), times the examples a client actually processed (from the local steps it
  reported, exactly as :func:`fedlab.fl.training.train` batches them);
* **time** = FLOPs / the device's sustained throughput; transfers = bytes x 8 / the link's
  bandwidth (down and up), the bytes being the model payload the Grid meters;
* **energy** = the device's active power x compute time + its transfer power x transfer
  time (+ its idle power while it waits for the round's slowest client, ``count_idle``);
  **emissions** = energy x the carbon intensity of the client's grid at the simulated time;
* the **simulated clock**: a round lasts its training phase (the slowest trained client,
  or the deadline if a client missed it) plus its evaluation phase (the slowest evaluated
  client); the run's clock is the sum of its rounds. The clock is computed from the seeded
  schedule (:class:`fedlab.fl.schedule.Scheduler`), so carbon-aware selection can read the
  intensity at the start of a round before it runs, and a resumed run needs no saved state.

Nothing here replaces the host measurement: the record keeps both, side by side.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Joules in a kWh.
J_PER_KWH = 3.6e6


# --------------------------------------------------------------------------------------
# Profiles and their assignment to clients
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A device type: sustained throughput and power (constants and sources in the YAML)."""

    name: str
    gflops: float
    active_w: float
    idle_w: float
    link: str
    source: str = ""

    def compute_s(self, flops: float) -> float:
        """Seconds this device needs for ``flops`` floating-point operations."""
        return flops / (self.gflops * 1e9)


@dataclass(frozen=True)
class Link:
    """A network link type: bandwidth each way and the device's power while transferring."""

    name: str
    down_mbps: float
    up_mbps: float
    transfer_w: float
    source: str = ""

    def seconds(self, bytes_down: float, bytes_up: float) -> float:
        """Seconds to receive ``bytes_down`` and send ``bytes_up`` (1 Mbit/s = 10^6 bit/s)."""
        return 8 * bytes_down / (self.down_mbps * 1e6) + 8 * bytes_up / (self.up_mbps * 1e6)


def _choice(spec: Any, known: Mapping[str, Any], key: str) -> None:
    if spec not in known:
        raise ValueError(f"{key}: unknown '{spec}'; choose from {', '.join(sorted(known))}")


def assign(num_clients: int, spec: Any, known: Mapping[str, Any], seed: int, key: str) -> list[str]:
    """Each client's device (or link) name from ``spec``.

    ``spec`` is one name for every client; ``{client_id: name, "default": name}``; or a
    weighted mix ``{name: weight}`` dealt out with the seed: exactly round(weight share x N)
    clients of each (largest remainders fill up), in a seeded random order, so a 30/50/20
    mix of 10 clients is 3/5/2 devices and not a lottery.
    """
    if isinstance(spec, str):
        _choice(spec, known, key)
        return [spec] * num_clients
    spec = dict(spec)
    if all(str(k).isdigit() or k == "default" for k in spec):
        default = spec.get("default")
        out = []
        for cid in range(num_clients):
            name = spec.get(cid, spec.get(str(cid), default))
            if name is None:
                raise ValueError(f"{key}: no entry for client {cid}: list it or give a 'default'")
            _choice(name, known, key)
            out.append(name)
        return out
    for name, weight in spec.items():
        _choice(name, known, key)
        if not (isinstance(weight, int | float) and weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"{key}: weight of '{name}' must be a number >= 0, got {weight!r}")
    total = math.fsum(spec.values())
    if total <= 0:
        raise ValueError(f"{key}: the weights must not all be 0")
    quotas = {name: num_clients * w / total for name, w in spec.items()}
    counts = {name: math.floor(q) for name, q in quotas.items()}
    by_remainder = sorted(spec, key=lambda n: (-(quotas[n] - counts[n]), list(spec).index(n)))
    for name in by_remainder[: num_clients - sum(counts.values())]:
        counts[name] += 1
    out = [name for name in spec for _ in range(counts[name])]
    random.Random(seed).shuffle(out)
    return out


# --------------------------------------------------------------------------------------
# Work: FLOPs per example, examples per round
# --------------------------------------------------------------------------------------


def flops_per_example(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    train: bool,
    batch: int = 8,
) -> float:
    """FLOPs one example costs: forward (+ loss and backward when ``train``), per example.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` over a batch of ``batch`` random
    inputs, divided by ``batch``: it counts the matrix products and convolutions (2 FLOPs per
    multiply-add) that dominate training, not element-wise ops or the optimizer step, the
    convention of published per-model FLOP counts. DP-SGD costs the same count: its
    per-example gradients are the terms of the batch gradient before the sum, and clipping and
    noise are element-wise (its measured slowdown on real hardware is memory traffic and
    overhead, which a FLOP model does not see; benchmarks/README.md has the host figures).
    The model is used on a deep copy, so the caller's is untouched.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model)
    model.train(train)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=generator)
    y = torch.randint(0, num_classes, (batch,), generator=generator)
    with FlopCounterMode(display=False) as counter:
        if train:
            nn.functional.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / batch


def examples_processed(n: int, batch_size: int, steps: int, *, poisson: bool) -> float:
    """Examples a client's ``steps`` local steps went through on ``n`` examples.

    Mirrors :func:`fedlab.fl.training.batches`: an epoch is ceil(n / batch_size) batches, all
    full but the last. DP-SGD's Poisson batches (sampling rate 1 / batches per epoch) hold
    n / batches examples on average, the expected count.
    """
    if n == 0 or steps == 0:
        return 0.0
    per_epoch = math.ceil(n / batch_size)
    if poisson:
        return steps * n / per_epoch
    return (steps // per_epoch) * n + (steps % per_epoch) * batch_size


def steps_for(epochs: float, n: int, batch_size: int) -> int:
    """Local steps of ``epochs`` (a float) on ``n`` examples, as the clients count them."""
    return max(1, math.ceil(epochs * math.ceil(n / batch_size)))


def epochs_for_steps(steps: int, n: int, batch_size: int) -> float:
    """The largest ``epochs`` value whose :func:`steps_for` is ``steps`` (step-aligned)."""
    per_epoch = math.ceil(n / batch_size)
    epochs = steps / per_epoch
    while steps_for(epochs, n, batch_size) > steps:  # float rounding of steps / per_epoch
        epochs = math.nextafter(epochs, 0.0)
    return epochs


# --------------------------------------------------------------------------------------
# The fleet: every client's device, and what a round costs on it
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseCost:
    """One client's work in one phase of a round, on its device."""

    flops: float
    compute_s: float
    transfer_s: float

    @property
    def busy_s(self) -> float:
        """Seconds the client is busy (transfers and compute, one after the other)."""
        return self.compute_s + self.transfer_s


@dataclass(frozen=True)
class Fleet:
    """Every client's device and link, and the run's per-example work and model payload.

    Built once per run (:meth:`from_config`); the scheduler asks it how long a planned round
    takes, the :class:`DeviceLedger` how much energy the round that happened used.
    """

    devices: tuple[Device, ...]  # per client
    links: tuple[Link, ...]  # per client
    train_sizes: tuple[int, ...]
    test_sizes: tuple[int, ...]
    batch_size: int
    poisson: bool  # DP-SGD's Poisson batches
    train_flops: float  # per example, forward + backward
    eval_flops: float  # per example, forward
    model_bytes: int  # one model payload, as the Grid meters it

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        model: nn.Module,
        input_shape: Sequence[int],
        num_classes: int,
        train_sizes: Sequence[int],
        test_sizes: Sequence[int],
        batch_size: int,
        seed: int,
        poisson: bool = False,
    ) -> Fleet:
        """The fleet a :class:`fedlab.config.schema.DevicesConfig` describes, for ``model``."""
        from flwr.app import ArrayRecord

        library = cfg.profiles
        known_devices = {
            name: Device(name, p.gflops, p.active_w, p.idle_w, p.link, p.source)
            for name, p in library.devices.items()
        }
        known_links = {
            name: Link(name, p.down_mbps, p.up_mbps, p.transfer_w, p.source)
            for name, p in library.links.items()
        }
        n = len(train_sizes)
        names = assign(n, cfg.mix, known_devices, seed, "devices.mix")
        devices = tuple(known_devices[name] for name in names)
        if cfg.links is None:
            link_names = [d.link for d in devices]
        else:
            link_names = assign(n, cfg.links, known_links, seed + 1, "devices.links")
        return cls(
            devices=devices,
            links=tuple(known_links[name] for name in link_names),
            train_sizes=tuple(train_sizes),
            test_sizes=tuple(test_sizes),
            batch_size=batch_size,
            poisson=poisson,
            train_flops=flops_per_example(model, input_shape, num_classes, train=True),
            eval_flops=flops_per_example(model, input_shape, num_classes, train=False),
            model_bytes=ArrayRecord(model.state_dict()).count_bytes(),
        )

    def train_cost(self, client: int, steps: int) -> PhaseCost:
        """Receiving the model, ``steps`` local steps, sending the update back."""
        examples = examples_processed(
            self.train_sizes[client], self.batch_size, steps, poisson=self.poisson
        )
        flops = examples * self.train_flops
        return PhaseCost(
            flops=flops,
            compute_s=self.devices[client].compute_s(flops),
            transfer_s=self.links[client].seconds(self.model_bytes, self.model_bytes),
        )

    def evaluate_cost(self, client: int) -> PhaseCost:
        """Receiving the model and a forward pass over the client's test examples."""
        flops = self.test_sizes[client] * self.eval_flops
        return PhaseCost(
            flops=flops,
            compute_s=self.devices[client].compute_s(flops),
            transfer_s=self.links[client].seconds(self.model_bytes, 0),
        )

    def train_seconds(self, client: int, epochs: float) -> float:
        """Seconds the client's training phase takes for ``epochs`` local epochs."""
        steps = steps_for(epochs, self.train_sizes[client], self.batch_size)
        return self.train_cost(client, steps).busy_s

    def epochs_within(self, client: int, epochs: float, deadline_s: float) -> float:
        """The most of ``epochs`` the client finishes, transfers included, by ``deadline_s``.

        Whole local steps only; 0.0 when not even one step fits.
        """
        n = self.train_sizes[client]
        planned = steps_for(epochs, n, self.batch_size)
        if self.train_cost(client, planned).busy_s <= deadline_s:
            return epochs
        low, high = 0, planned  # train_cost grows with steps: bisect the last one that fits
        while low < high:
            mid = (low + high + 1) // 2
            if self.train_cost(client, mid).busy_s <= deadline_s:
                low = mid
            else:
                high = mid - 1
        return epochs_for_steps(low, n, self.batch_size) if low else 0.0

    def round_seconds(
        self,
        epochs: Mapping[int, float],
        evaluate: Sequence[int],
        failing: frozenset[int] = frozenset(),
        deadline_s: float | None = None,
        missed: Sequence[int] = (),
    ) -> tuple[float, float]:
        """(training phase, evaluation phase) seconds of a planned round.

        Training lasts until the slowest trained client is done, or the deadline when a
        client missed it (the server stops waiting then). A client told to fail crashes on
        receipt and does not hold the round up.
        """
        times = [self.train_seconds(c, e) for c, e in epochs.items() if c not in failing]
        train = max(times, default=0.0)
        if deadline_s is not None and missed:
            train = max(train, deadline_s)
        evaluation = max((self.evaluate_cost(c).busy_s for c in evaluate), default=0.0)
        return train, evaluation


# --------------------------------------------------------------------------------------
# The ledger: device time, energy and emissions of what happened, per client and round
# --------------------------------------------------------------------------------------


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
        intensity: Any,  # (client, simulated seconds) -> gCO2e/kWh of the client's grid
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
            columns = self._client_columns(client, cost, idle_s, self.intensity(client, start_s))
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
