"""Benchmark: forward + backward of a 4-qubit, batch-10 QNN classifier layer, per engine.

The layer is the sandbox classifier (``z_feature_map`` + ``real_amplitudes(reps=2)``, 12 weights,
<Z_i> read on each of the 4 qubits), fed a batch of 10 samples; one step is ``forward``, a scalar
loss, and ``backward`` to the weights. Engines:

* ``baseline``: ``TorchConnector(EstimatorQNN(...))`` with the library defaults (reference
  estimator, parameter-shift gradients), i.e. what a tutorial gives you;
* ``reference`` / ``aer``: the sandbox's EstimatorQNN engines (exact, precision 0) on Qiskit's
  ``StatevectorEstimator`` and on Aer's ``EstimatorV2``;
* ``torch``: ``sandbox_quantum.statevector.StatevectorQNN``, exact batched statevector with
  autograd (tests/quantum/test_statevector.py checks it against EstimatorQNN to 1e-6).

Each engine is timed for ``--repeats`` steps after one warm-up step; the median is reported with
the ratio to the baseline and to PennyLane's default.qubit backprop (~9 ms for the same kind of
classifier, measured on this class of machine per /work/shared/GUIDE.md; PennyLane is not
installed here, so that figure is quoted, not re-measured).

``--profile ENGINE`` runs cProfile over a few steps. Qiskit primitives execute jobs in a worker
thread, invisible to cProfile, so profiling swaps in a synchronous executor first.

Run: ``PYTHONPATH=. python benchmarks/bench_qnn.py [--threads 1] [--repeats 20]
[--profile baseline]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from concurrent.futures import Future
from typing import Any

import torch
from qiskit_machine_learning.connectors import TorchConnector
from qiskit_machine_learning.neural_networks import EstimatorQNN

from sandbox_quantum.qnn import classifier_circuit, per_qubit_z, quantum_layer

NUM_QUBITS = 4
BATCH = 10
ANSATZ_REPS = 2
PENNYLANE_BACKPROP_MS = 9.0
ENGINES = ("baseline", "reference", "aer", "torch")


def build(engine: str) -> torch.nn.Module:
    """The benchmark layer on one engine; same seed, so all start from the same weights."""
    torch.manual_seed(0)
    spec = classifier_circuit(NUM_QUBITS, reps=ANSATZ_REPS)
    observables = per_qubit_z(NUM_QUBITS)
    if engine == "baseline":
        qnn = EstimatorQNN(
            circuit=spec.circuit,
            observables=observables,
            input_params=list(spec.input_params),
            weight_params=list(spec.weight_params),
        )
        return TorchConnector(qnn)
    return quantum_layer(spec, observables, engine=engine, input_gradients=False)


def step(layer: torch.nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad()
    layer(x).pow(2).sum().backward()


def time_engine(engine: str, repeats: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` steps, after one warm-up step."""
    layer = build(engine)
    x = torch.rand(BATCH, NUM_QUBITS, generator=torch.Generator().manual_seed(1)) * torch.pi / 2
    step(layer, x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(layer, x)
        times.append((time.perf_counter() - start) * 1e3)
    return times


class _SynchronousExecutor:
    """Stand-in for ThreadPoolExecutor so that cProfile sees the primitive's work."""

    def __init__(self, max_workers: int | None = None) -> None:
        del max_workers

    def submit(self, function: Any, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        future.set_result(function(*args, **kwargs))
        return future

    def shutdown(self, wait: bool = True) -> None:
        del wait


def profile(engine: str, steps: int = 3, top: int = 15) -> None:
    import qiskit.primitives.primitive_job as primitive_job

    primitive_job.ThreadPoolExecutor = _SynchronousExecutor
    layer = build(engine)
    x = torch.rand(BATCH, NUM_QUBITS) * torch.pi / 2
    step(layer, x)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step(layer, x)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per engine")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--profile", choices=ENGINES, help="profile one engine instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        profile(args.profile)
        return
    results = {}
    for engine in args.engines:
        # Slow engines get fewer repeats: their median is stable well before 20 steps.
        repeats = args.repeats if engine == "torch" else max(3, args.repeats // 4)
        results[engine] = time_engine(engine, repeats)
    baseline = statistics.median(results["baseline"]) if "baseline" in results else None
    print(
        f"torch threads: {args.threads}; batch {BATCH}, {NUM_QUBITS} qubits, "
        f"{NUM_QUBITS * (ANSATZ_REPS + 1)} weights, {NUM_QUBITS} observables\n"
    )
    print("| engine | median ms | min ms | steps | speed-up vs baseline | time / PennyLane 9 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine, times in results.items():
        median = statistics.median(times)
        speedup = f"{baseline / median:.1f}x" if baseline else "-"
        print(
            f"| {engine} | {median:.1f} | {min(times):.1f} | {len(times)} | {speedup} "
            f"| {median / PENNYLANE_BACKPROP_MS:.2f} |"
        )


if __name__ == "__main__":
    main()
