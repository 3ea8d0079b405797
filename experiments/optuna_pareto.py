"""Multi-objective search: maximize accuracy, minimize kgCO2e, with Optuna's NSGA-II.

Each trial runs ``fedlab-run`` as a subprocess with the trial's overrides into
``<sweep dir>/<trial number>/`` and reads the ``--objectives`` (default ``accuracy`` and
``emissions_kg``) from the run's record with :mod:`fedlab.reports.objectives`, in the
directions ``fedlab-compare`` ranks them by; the sweep directory is then an ordinary
folder of run records, so ``fedlab-compare <sweep dir>`` (run at the end) reports the
Pareto set with every other number of the runs. Why a script and not Hydra's Optuna
sweeper (hydra-optuna-sweeper 1.3.0 needs optuna 2.10, whose study storage fails with
SQLAlchemy 2): docs/compare.md.

    pip install "optuna>=4,<6"      # not a fedlab dependency; tested with optuna 5.0.0
    python experiments/optuna_pareto.py --sweep-dir multirun/pareto --trials 20 \\
        -- dataset=synthetic num_rounds=10 <the override that turns carbon tracking on>

Everything after ``--`` is passed to every trial unchanged. The study is stored in
``<sweep dir>/study.db``, so running the same command again resumes it with new trial
numbers (and new run directories). Trials run one at a time: one fedlab run already uses
every core through Ray. Edit :func:`search_space` to search other knobs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import optuna

from fedlab.record.reader import ReadError
from fedlab.reports import compare
from fedlab.reports.objectives import directions, objective_values


class TrialFailed(RuntimeError):
    """The run of one trial did not complete; Optuna records the trial as failed."""


def search_space(trial: optuna.Trial) -> list[str]:
    """The trial's Hydra overrides: the knobs that trade accuracy against energy.

    Local epochs and the fraction of clients per round set how much compute and
    communication a round costs; the strategy and learning rate set how much accuracy that
    buys.
    """
    strategy = trial.suggest_categorical("strategy", ["fedavg", "fedprox"])
    return [
        f"strategy={strategy}",
        f"client.local_epochs={trial.suggest_int('client.local_epochs', 1, 5)}",
        f"client.lr={trial.suggest_float('client.lr', 0.01, 0.3, log=True)}",
        f"strategy.fraction_train={trial.suggest_float('strategy.fraction_train', 0.2, 1.0)}",
    ]


def run_trial(fedlab_run: str, run_dir: Path, overrides: list[str], names: list[str]) -> list:
    """Run one fedlab experiment into ``run_dir``; the values of ``names`` if it completed
    and recorded them (else :class:`TrialFailed`)."""
    command = [fedlab_run, *overrides, f"hydra.run.dir={run_dir}"]
    print(f"\n[optuna_pareto] {' '.join(command)}", flush=True)
    code = subprocess.run(command, check=False).returncode
    if not (run_dir / "results.json").is_file():
        raise TrialFailed(f"fedlab-run exited with status {code} and wrote no record")
    try:
        return objective_values(run_dir, names)
    except (ValueError, ReadError) as err:
        raise TrialFailed(str(err)) from None


def main() -> None:
    """Run the study, then ``fedlab-compare`` on the sweep directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep-dir", type=Path, required=True, help="one run dir per trial")
    parser.add_argument("--trials", type=int, default=20, help="trials to add to the study")
    parser.add_argument("--seed", type=int, default=0, help="seed of the NSGA-II sampler")
    parser.add_argument("--population", type=int, default=10, help="NSGA-II population size")
    parser.add_argument(
        "--objectives",
        default="accuracy,emissions_kg",
        help="comma-separated fedlab-compare metrics (comparison.csv columns) to optimise",
    )
    parser.add_argument("fixed", nargs="*", help="overrides for every trial (after --)")
    args = parser.parse_args()
    names = [n.strip() for n in args.objectives.split(",") if n.strip()]
    try:
        study_directions = directions(names)
    except ValueError as err:
        sys.exit(f"optuna_pareto: --objectives: {err}")
    fedlab_run = shutil.which("fedlab-run")
    if fedlab_run is None:
        sys.exit("optuna_pareto: fedlab-run is not on PATH (activate fedlab's environment)")
    sweep = args.sweep_dir.resolve()
    sweep.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name="fedlab-pareto",
        storage=f"sqlite:///{sweep / 'study.db'}",
        load_if_exists=True,
        directions=study_directions,
        sampler=optuna.samplers.NSGAIISampler(population_size=args.population, seed=args.seed),
    )

    def objective(trial: optuna.Trial) -> list:
        run_dir = sweep / str(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        return run_trial(fedlab_run, run_dir, [*args.fixed, *search_space(trial)], names)

    study.optimize(objective, n_trials=args.trials, catch=(TrialFailed,))
    print(f"\n[optuna_pareto] Pareto set by Optuna: trials {[t.number for t in study.best_trials]}")
    sys.exit(compare.main([str(sweep)]))


if __name__ == "__main__":
    main()
