"""``simulation=auto`` (the default): pick the engine this machine and run can use best.

The rule asks what the machine and the run offer, never which preset was named:

* a Ray cluster named (``simulation.ray_address``) or GPUs asked per client
  (``simulation.client_gpus``): **Ray**, the only engine here that spans machines or
  schedules GPUs;
* otherwise the clients stay on this machine, where Ray's fixed costs (its daemons, actors
  importing torch and Flower: ~10 s a run, 2-3 ms a message, benchmarks/README.md) never pay
  for themselves against processes forked from the driver: the **process pool**, one worker
  per usable core (``os.sched_getaffinity``: what a cgroup or ``taskset`` leaves), no more
  workers than clients, and no more than the free memory holds copies of this process;
* one usable worker (a single core, a single client, no ``fork``): **in-process**, since a
  pool of one only adds a message round trip per client;
* clients whose work is small (under :data:`POOL_MIN_WORK_S` a message, estimated by
  :func:`client_work` from the model's counted FLOPs and torch operations and the round's
  training and evaluation sizes): **in-process** too, since each message's round trip to a
  worker then costs more than the second core gives.

The reason is part of the choice: the run's first console line says which engine ran and why.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from fedlab.config.experiment import Experiment
    from fedlab.config.schema import SimulationConfig
    from fedlab.data.partition import FederatedData

log = logging.getLogger("fedlab")

#: Share of the available memory the pool's workers may take (the driver keeps the rest).
MEMORY_SHARE = 0.8
#: Below this estimated compute per client message (:func:`client_work`), a message's round
#: trip to a pool worker (pickling, pipes, wake-ups: ~0.5 ms on the 2-core development
#: machine) costs more than the second core gives back, so the clients run in-process.
#: Measured there (benchmarks/README.md), rounds in-process against 2 pool workers: the
#: benchmark workload (estimated 0.03 ms a message) 1.5 s against 2.0 s; the default run
#: (1.1 ms) and the quantum model on iris (3.3 ms) tied; FedProx's synthetic benchmark (far
#: above) 8.9 s against 5.5 s; the CNN workload (6.9 ms) trained 1.7x faster on 2 workers.
POOL_MIN_WORK_S = 2e-3
#: The estimate's machine constants, fitted on that machine (one torch thread, small
#: models): dense FLOPs per second, seconds per dispatched torch operation (what dominates
#: small or many-gate models such as the quantum ones), and a training step's fixed cost
#: (loss, zero_grad, optimizer step). A linear-layer MLP, the CNN and the quantum model's
#: training steps at batch 32 came within 1.5x of the model (0.21 / 1.57 / 2.74 ms).
FLOP_RATE = 1.1e10
OP_S = 2.5e-6
STEP_S = 5e-5
# the choice already announced for this process's next run: (repr of the config, clients)
_announced: dict[tuple[str, int], Choice] = {}


@dataclass(frozen=True)
class Choice:
    """The engine to run (``backend``), its worker count (pool only) and why."""

    backend: str
    workers: int
    reason: str

    @property
    def trains_here(self) -> bool:
        """Whether clients train in this process or in workers forked from it (not in Ray's
        actors, which import everything afresh)."""
        return self.backend in ("pool", "inprocess")

    @property
    def spare_cores(self) -> int:
        """Cores the rounds leave idle here: in-process clients use one; a pool's workers and
        the driver feeding them all of them; Ray's actors as many as it places (none known
        spare). Work forked beside the rounds (the audit's imports) pays only where one is."""
        if self.backend == "inprocess":
            return usable_cores() - 1
        if self.backend == "pool":
            return max(0, usable_cores() - self.workers - 1)
        return 0

    def line(self) -> str:
        """The console line: ``engine pool (2 workers): <reason>``."""
        size = f" ({self.workers} workers)" if self.backend == "pool" else ""
        return f"engine {self.backend}{size}: {self.reason}"


def usable_cores() -> int:
    """Cores this process may run on (affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity API
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes the kernel reports available (``MemAvailable``); None where unknown."""
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemAvailable:"):
                return int(text.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_memory() -> int | None:
    """This process's resident bytes: what one forked worker can grow to at most (its pages
    start shared with the driver's and are copied only when written), model and data included.
    """
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def client_work(exp: Experiment, fed: FederatedData, model: torch.nn.Module) -> float:
    """Estimated seconds of client compute per message, averaged over a round's messages:
    training (local epochs of batches over the mean client's training split, each step a
    forward and a backward pass, ~3x a forward, plus :data:`STEP_S`) for the clients trained
    per round, and federated evaluation (one forward pass over the mean client's test split)
    for the clients evaluated per round.

    A forward pass is measured by counting, on one zero input of the dataset's shape, its
    FLOPs (torch's ``FlopCounterMode``: matrix products and convolutions) and its dispatched
    torch operations, priced at :data:`FLOP_RATE` and :data:`OP_S`; counted, not timed, so
    the estimate and the engine it picks are the same on every run of a configuration.
    """
    import math

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Operations(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    flops, operations, training = FlopCounterMode(display=False), Operations(), model.training
    with flops, operations, torch.no_grad():
        model.eval()
        model(torch.zeros((1, *fed.input_shape)))
    model.train(training)
    per_example, per_pass = flops.get_total_flops() / FLOP_RATE, operations.count * OP_S

    schedule, clients = exp.scheduler(), max(1, fed.num_clients)
    trained = schedule.trained_per_round()
    evaluated = (
        min(clients, max(1, int(clients * schedule.fraction_evaluate)))
        if schedule.fraction_evaluate > 0 else 0
    )  # fmt: skip
    mean_train = sum(len(i) for i in fed.client_train) / clients
    mean_test = sum(len(i) for i in fed.client_test) / clients
    batch = min(exp.cfg.client.batch_size, max(1.0, mean_train))
    steps = math.ceil(mean_train / batch) * float(exp.cfg.client.local_epochs)
    train_s = steps * (3 * (batch * per_example + per_pass) + STEP_S)
    evaluate_s = mean_test * per_example + per_pass if mean_test else 0.0
    return (trained * train_s + evaluated * evaluate_s) / max(1, trained + evaluated)


def choose(
    sim: SimulationConfig,
    num_clients: int,
    *,
    work: Callable[[], float] | None = None,
    cores: int | None = None,
    can_fork: bool | None = None,
    memory: tuple[int | None, int | None] | None = None,
) -> Choice:
    """The engine ``simulation=auto`` runs for ``num_clients`` clients on this machine.

    ``work`` gives :func:`client_work`'s estimate, called only where the choice depends on
    it (None: unknown, not a reason to stay in-process). ``cores``, ``can_fork`` and
    ``memory`` (available, per worker) default to what this machine reports; tests pass them
    to check the rule on machines they do not run on.
    """
    if sim.ray_address is not None:
        where = sim.ray_address
        return Choice("ray", 0, f"a Ray cluster is named (simulation.ray_address={where})")
    if sim.client_gpus > 0:
        gpus = sim.client_gpus
        return Choice("ray", 0, f"GPUs per client asked (simulation.client_gpus={gpus}): "
                      "Ray schedules them")  # fmt: skip
    cores = usable_cores() if cores is None else cores
    if can_fork is None:
        can_fork = "fork" in multiprocessing.get_all_start_methods()
    available, per_worker = (available_memory(), resident_memory()) if memory is None else memory
    fit = cores
    if available is not None and per_worker:
        fit = max(1, int(MEMORY_SHARE * available // per_worker))
    workers = sim.workers if sim.workers is not None else min(cores, num_clients, fit)
    where = f"{cores} core{'s' if cores != 1 else ''} on one machine, no Ray cluster named"
    if not can_fork:
        return Choice("inprocess", 1, f"{where}; no fork() on this platform for a process pool")
    if workers <= 1:
        limit = (
            "simulation.workers=1" if sim.workers is not None
            else "1 core" if cores <= 1
            else "1 client" if num_clients <= 1
            else f"memory for 1 worker ({(available or 0) / 2**30:.1f} GiB available)"
        )  # fmt: skip
        return Choice("inprocess", 1, f"{where}; {limit}: clients run one after another")
    seconds = work() if work is not None and sim.workers is None else None
    if seconds is not None and seconds < POOL_MIN_WORK_S:
        return Choice("inprocess", 1, (
            f"{where}; small clients (~{seconds * 1e3:.2g} ms of compute a message, "
            f"estimated; under {POOL_MIN_WORK_S * 1e3:g} ms a pool worker's round trip costs "
            "more than a second core gives: simulation=pool runs one)"
        ))  # fmt: skip
    capped = " (memory-bound)" if workers == fit < min(cores, num_clients) else ""
    return Choice(
        "pool",
        workers,
        f"{where}{capped}; a process pool avoids Ray's ~10 s start-up "
        "(simulation=local runs Ray)",
    )


def decide(
    sim: SimulationConfig, num_clients: int, work: Callable[[], float] | None = None
) -> Choice:
    """The engine a run with ``sim`` uses: the one ``simulation.backend`` names, or the
    rule's choice for ``auto`` (``work``: :func:`client_work`'s estimate, where known)."""
    if sim.backend != "auto":
        pool = sim.backend == "pool"
        workers = (sim.workers or min(usable_cores(), num_clients)) if pool else 0
        return Choice(sim.backend, workers, f"asked for (simulation.backend={sim.backend})")
    return choose(sim, num_clients, work=work)


def announce(
    sim: SimulationConfig, num_clients: int, work: Callable[[], float] | None = None
) -> Choice:
    """Say the engine now (``fedlab-run``'s first line) and remember the choice, so that the
    run uses it and does not say it again."""
    choice = decide(sim, num_clients, work)
    log.info("fedlab: %s", choice.line())
    _announced.clear()
    _announced[(repr(sim), num_clients)] = choice
    return choice


def resolve(sim: SimulationConfig, num_clients: int) -> Choice:
    """The choice announced for this run, else decided and said now (a run not started by
    ``fedlab-run``: a test, a notebook, a resumed run)."""
    choice = _announced.pop((repr(sim), num_clients), None)
    _announced.clear()
    if choice is None:
        choice = decide(sim, num_clients)
        log.info("fedlab: %s", choice.line())
    return choice


def run_auto(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, sim: SimulationConfig
) -> None:
    """Run one simulation on the engine :func:`choose` picks (for callers of the registry;
    :func:`fedlab.engines.simulation.simulate` resolves ``auto`` itself)."""
    from dataclasses import replace

    from fedlab.engines.registry import engine

    choice = resolve(sim, num_clients)
    chosen = replace(sim, backend=choice.backend, workers=choice.workers or sim.workers)
    engine(choice.backend)(server_app, client_app, num_clients, chosen)
