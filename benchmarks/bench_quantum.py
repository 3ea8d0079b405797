"""Quantum, measured not quoted: fedlab's statevector engine beside PennyLane, same run.

The layer is the sandbox classifier (``z_feature_map(n)`` + ``real_amplitudes(n, reps=2)``,
3n weights, <Z_q> read on every qubit) at 4, 8 and 12 qubits, on a batch of 10; one step is
the forward pass, a scalar loss (sum of squared outputs) and the backward pass to the weights.

* ``fedlab``: ``sandbox_quantum.statevector.StatevectorQNN`` (exact, batched, autograd).
* ``pennylane``: PennyLane's ``default.qubit`` with ``diff_method="backprop"`` and the torch
  interface, on the *same* circuit: the PennyLane QNode is built gate by gate from the same
  transpiled Qiskit circuit fedlab compiles (H, P, RY, CX; the same angle expressions), and
  the benchmark checks that both give the same outputs and weight gradients (to 1e-10) before
  timing anything.

Timing: the two engines alternate step by step (so a burst of load on the shared machine hits
both), one warm-up step each, median of ``repeats`` steps, one torch thread. PennyLane is in
the ``benchmarks`` extra (``pip install -e .[benchmarks]``).

Run from the repository root:  PYTHONPATH=. .venv/bin/python benchmarks/bench_quantum.py
``--profile N`` prints where fedlab's time goes at N qubits (cProfile, torch ops).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from qiskit import transpile

from sandbox_quantum.qnn import classifier_circuit, per_qubit_z
from sandbox_quantum.statevector import StatevectorQNN, _compile_expression

HERE = Path(__file__).resolve().parent
QUBITS = (4, 8, 12)
BATCH = 10
REPS = 2
GOAL = 0.5  # fedlab time / PennyLane time


def fedlab_layer(num_qubits: int) -> StatevectorQNN:
    torch.manual_seed(0)
    spec = classifier_circuit(num_qubits, reps=REPS)
    return StatevectorQNN(
        spec.circuit, spec.input_params, spec.weight_params, per_qubit_z(num_qubits)
    )


def pennylane_layer(layer: StatevectorQNN) -> Callable[[torch.Tensor], torch.Tensor]:
    """A PennyLane QNode computing what ``layer`` does, with ``layer.weight`` as its weights."""
    import pennylane as qml

    circuit, inputs, weights, _ = layer._source
    flat = transpile(circuit, basis_gates=["h", "p", "ry", "rx", "rz", "cx"], optimization_level=0)
    index = {p: i for i, p in enumerate((*inputs, *weights))}
    ops: dict[str, Callable[..., object]] = {
        "h": qml.Hadamard, "cx": qml.CNOT, "p": qml.PhaseShift,
        "ry": qml.RY, "rx": qml.RX, "rz": qml.RZ,
    }
    program = []
    for instruction in flat.data:
        name = instruction.operation.name
        if name == "barrier":
            continue
        wires = [flat.find_bit(q).index for q in instruction.qubits]
        params = instruction.operation.params
        angle = _compile_expression(params[0], index) if params else None
        program.append((ops[name], wires, angle))
    n = layer.num_qubits
    device = qml.device("default.qubit", wires=n)

    @qml.qnode(device, interface="torch", diff_method="backprop")
    def qnode(values: torch.Tensor) -> list:
        for op, wires, angle in program:
            if angle is None:
                op(wires=wires)
            else:
                op(angle(values), wires=wires)
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        values = torch.cat([x.double(), layer.weight.double().expand(len(x), -1)], dim=1)
        return torch.stack(qnode(values), dim=-1)

    return forward


def _step(forward: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor,
          x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight.grad = None
    out = forward(x)
    out.pow(2).sum().backward()
    assert weight.grad is not None
    return out.detach(), weight.grad.detach().clone()


def compare(num_qubits: int, repeats: int) -> dict:
    """Interleaved timings of both engines at ``num_qubits`` after checking they agree."""
    layer = fedlab_layer(num_qubits)
    penny = pennylane_layer(layer)
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(BATCH, num_qubits, generator=gen, dtype=torch.double) * torch.pi / 2)
    ours, ours_grad = _step(layer, layer.weight, x)
    theirs, theirs_grad = _step(penny, layer.weight, x)
    error = max(
        float((ours.double() - theirs).abs().max()), float((ours_grad - theirs_grad).abs().max())
    )
    if error > 1e-10:
        raise AssertionError(f"{num_qubits} qubits: engines differ by {error:.2e}")
    times: dict[str, list[float]] = {"fedlab": [], "pennylane": []}
    for _ in range(repeats):
        for name, forward in (("fedlab", layer), ("pennylane", penny)):
            start = time.perf_counter()
            _step(forward, layer.weight, x)
            times[name].append(1e3 * (time.perf_counter() - start))
    fed, pl = statistics.median(times["fedlab"]), statistics.median(times["pennylane"])
    return {
        "qubits": num_qubits,
        "weights": layer.weight.numel(),
        "fedlab_ms": fed,
        "pennylane_ms": pl,
        "ratio": fed / pl,
        "goal_met": fed / pl <= GOAL,
        "max_abs_difference": error,
        "repeats": repeats,
    }


def profile(num_qubits: int, steps: int = 20, top: int = 12) -> None:
    """Where fedlab's step time goes at ``num_qubits`` (cProfile, sorted by own time)."""
    layer = fedlab_layer(num_qubits)
    x = torch.rand(BATCH, num_qubits) * torch.pi / 2
    _step(layer, layer.weight, x)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        _step(layer, layer.weight, x)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def table(rows: list[dict]) -> str:
    lines = [
        "| qubits | weights | fedlab ms | PennyLane default.qubit ms | fedlab / PennyLane | "
        f"goal <= {GOAL}x |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['qubits']} | {r['weights']} | {r['fedlab_ms']:.1f} | {r['pennylane_ms']:.1f} "
            f"| {r['ratio']:.2f}x | {'met' if r['goal_met'] else 'not met'} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    from fedlab.record.run_dir import save_figure

    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    qubits = [r["qubits"] for r in rows]
    ax.plot(qubits, [r["fedlab_ms"] for r in rows], "o-", label="fedlab StatevectorQNN")
    ax.plot(qubits, [r["pennylane_ms"] for r in rows], "s-", label="PennyLane default.qubit")
    ax.set(yscale="log", xlabel="qubits", ylabel="forward + backward ms (batch 10)",
           xticks=qubits)
    ax.legend()
    save_figure(fig, path)


def main(quick: bool = False) -> dict:
    """Both engines at 4, 8 and 12 qubits (quick: fewer repeats); plot in benchmarks/."""
    torch.set_num_threads(1)
    rows = [compare(n, 5 if quick else 30) for n in QUBITS]
    plot(rows, HERE / "quantum.png")
    return {"rows": rows, "table": table(rows), "plot": "benchmarks/quantum.png",
            "threads": 1, "batch": BATCH}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench_quantum.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 30")
    parser.add_argument("--profile", type=int, metavar="QUBITS", help="profile fedlab instead")
    args = parser.parse_args()
    if args.profile:
        torch.set_num_threads(1)
        profile(args.profile)
    else:
        print(table(main(args.quick)["rows"]))
