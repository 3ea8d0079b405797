"""``fedlab-run``: the Hydra entry point.

Errors end in one line and a non-zero exit, never a traceback: 2 for invalid input (config
values, unknown options, a used or unwritable run directory), 1 for a run that failed (its
record says why), 3 for a run a tracker stopped (``budget_exhausted``, ``diverged``), 130 for
Ctrl-C and 143 for SIGTERM or SIGHUP (the record says ``interrupted``). A rejected run leaves
nothing behind: the directory Hydra created for it is removed again while it is empty.
Hydra reports composition errors (an unknown group option, a value of
the wrong type) itself over several lines; :func:`main` condenses them into one.

``--help`` (``-h``) alone, or with overrides, is fedlab's own (:mod:`fedlab.help`, read from
conf/ in a fraction of the time Hydra's takes); Hydra is imported only past that point, so this
module imports nothing heavy (issue #22).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import operator
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fedlab.config.errors import ConfigError
from fedlab.help import conf_root, render_help, wants_help

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from fedlab.background import Background

PROG = "fedlab-run"
#: Exit code of a run a tracker stopped on purpose (``budget_exhausted``, ``diverged``): not a
#: failure of fedlab, not a success of the experiment either.
STOPPED_EXIT = 3
#: Ctrl-C (SIGINT), and SIGTERM or SIGHUP (``kill``, SLURM preemption, a closed terminal):
#: the record says ``interrupted`` either way; 143 is the shell's 128 + SIGTERM, given for
#: SIGHUP too so that a batch system sees one code for "terminated from outside".
INTERRUPTED_EXIT = 130
TERMINATED_EXIT = 143
REAL_STDERR = sys.stderr
#: The topmost directories Hydra is about to create for this invocation (absent when the
#: output directory was checked): a rejected run removes what it created while it is empty,
#: and never a directory that existed before.
_CREATED: list[Path] = []


def fail(message: str, code: int, prog: str = PROG) -> NoReturn:
    """End the program with one line on stderr and exit ``code``."""
    print(f"{prog}: error: {message}", file=REAL_STDERR)
    sys.exit(code)


def release_stderr() -> None:
    """Called first by a Hydra task function: composition succeeded, stop capturing."""
    sys.stderr = REAL_STDERR


def run_hydra_app(hydra_main: Callable[[], Any], prog: str = PROG) -> None:
    """Run a ``@hydra.main`` function, turning Hydra's own errors into one line.

    Hydra reports composition errors over several lines (with search paths and a hint about
    HYDRA_FULL_ERROR); stderr is captured until the task function calls
    :func:`release_stderr`, and a failure before that is condensed with :func:`condense`.
    """
    captured = io.StringIO()
    sys.stderr = captured
    try:
        hydra_main()
    except ValueError as err:  # Hydra's own argument checks (e.g. --multirun with --cfg)
        if sys.stderr is not captured:
            raise
        sys.stderr = REAL_STDERR
        fail(str(err).strip().splitlines()[0], 2, prog)
    except SystemExit as exit_:
        if sys.stderr is captured and exit_.code not in (0, None):
            sys.stderr = REAL_STDERR
            fail(condense(captured.getvalue()), 2, prog)
        raise
    finally:
        if sys.stderr is captured:
            sys.stderr = REAL_STDERR
            REAL_STDERR.write(captured.getvalue())


def _run(cfg: DictConfig) -> float | None:
    """The task function :func:`main` hands to ``hydra.main``: one run of the composed config."""
    release_stderr()
    loading = _start_loading(cfg)  # before the imports below: they take ~2 s of one core
    try:
        return _run_job(cfg, loading)
    finally:
        if loading is not None:
            loading.cancel()


def _start_loading(cfg: DictConfig) -> Background | None:
    """A child that imports what preparing this run's data needs while the driver imports
    torch and Flower, then waits for the validated experiment's work
    (:meth:`fedlab.config.experiment.Experiment.start_loading`); None where the data are not
    prepared in a child (a dataset that is not ``background``, a resumed run, no fork)."""
    from fedlab.background import Background, can_fork
    from fedlab.data.partition import background_imports

    if cfg.get("resume") or not can_fork():
        return None
    imports = background_imports(cfg.get("dataset"), cfg.get("partition"))
    return None if imports is None else Background(operator.call, "data", imports, awaits=True)


def _run_job(cfg: DictConfig, loading: Background | None) -> float | None:
    """The run itself, in :func:`_run`'s Hydra context, the data's child already forked."""
    from hydra.core.hydra_config import HydraConfig

    from fedlab.console import setup_logging
    from fedlab.record.lifecycle import RunStopped, Terminated, handle_termination
    from fedlab.run import RunFailed, run_experiment

    handle_termination()
    setup_logging()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    changes = [
        o for o in overrides if not o.startswith(("resume=", "hydra.", "num_rounds="))
    ]
    if cfg.resume and changes:
        _reject(run_dir, f"resume: a resumed run keeps its own config (only num_rounds may "
                f"grow); remove {' '.join(changes)}")
    try:
        results = run_experiment(cfg, run_dir, overrides, loading=loading)
    except ConfigError as err:
        _reject(run_dir, str(err))
    except RunFailed as err:
        fail(f"run failed: {err} (record: {run_dir})", 1)
    except RunStopped as err:  # a tracker ended the run on purpose (budget, divergence)
        fail(f"run stopped: {err} (record: {run_dir})", STOPPED_EXIT)
    except KeyboardInterrupt as err:
        _leave_interrupted(
            run_dir, TERMINATED_EXIT if isinstance(err, Terminated) else INTERRUPTED_EXIT
        )
    return results["accuracy"]  # the objective Hydra sweepers optimise


class Callback:
    """Hydra's callback interface (``hydra.experimental.callback.Callback``), every hook a
    no-op: Hydra calls each hook on each callback it was given.

    Subclassing Hydra's own class would import Hydra (0.1 s) with this module, which
    ``fedlab-run --help`` has no use for (issue #22); Hydra only ever calls the hooks.
    tests/test_cli_help.py checks that this class has every hook Hydra's has.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before a single run's task function (``hydra.run.dir`` not created yet)."""

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        """After a single run's task function returned."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job of a multirun (``hydra.sweep.dir`` not created yet)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """After every job of a multirun."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before each job, in the process that runs it."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """After each job, with its ``JobReturn``."""


class OutputDirCheck(Callback):
    """Hydra callback: check the output directory before Hydra creates it.

    Hydra makes ``hydra.run.dir`` (``hydra.sweep.dir``) before the task function runs; a
    directory it cannot make would end in Hydra's traceback. Checked first, it ends in one line
    naming the key; and the directories about to be created are remembered, so a rejected run
    can remove them again (:func:`_reject`).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(Path(os.path.abspath(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(Path(os.path.abspath(config.hydra.sweep.dir)), "hydra.sweep.dir")


def _check_output_dir(path: Path, key: str) -> None:
    """Create ``path`` now, as Hydra would next, ending with one line naming ``key`` if it
    cannot be (permissions are tried, not inferred: ``os.access`` says yes to root even on a
    read-only file system); remember the topmost directory created."""
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        for created in missing:  # deepest first: leave nothing behind
            with contextlib.suppress(OSError):
                created.rmdir()
        release_stderr()
        reason = err.strerror or type(err).__name__
        fail(f"{key}: cannot create or write {path}: {reason}; choose a writable directory", 2)
    _CREATED[:] = missing[-1:]


def _reject(run_dir: Path, message: str) -> NoReturn:
    """Invalid input: remove what this invocation created for ``run_dir`` while it holds
    nothing but its ``run.log``, then end with one line and exit code 2."""
    log_file = run_dir / "run.log"
    if log_file.is_file() and [p.name for p in run_dir.iterdir()] == ["run.log"]:
        logging.shutdown()  # Hydra's file handler holds it open
        log_file.unlink()
    _reject_leftovers(run_dir)
    fail(message, 2)


def _reject_leftovers(directory: Path) -> None:
    """Remove ``directory`` and its parents up to the topmost one this invocation created,
    each only while empty (a sweep directory may hold Hydra's ``multirun.yaml``: a rejected
    job ends the whole multirun); a directory that existed before is never touched."""
    directory = Path(os.path.abspath(directory))
    for top in _CREATED:
        if directory != top and top not in directory.parents:
            continue
        for path in (directory, *directory.parents):
            if [p.name for p in path.iterdir()] == ["multirun.yaml"]:
                (path / "multirun.yaml").unlink()
            try:
                path.rmdir()  # only an empty directory goes
            except OSError:
                break
            if path == top:
                break


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, say how many runs were skipped.

    A run is skipped when its directory already held the same configuration, completed. The
    completed records in the sweep directory are noted when the multirun starts; one still
    holding the same ``finished_at`` at the end was skipped, whatever launcher ran the jobs.
    (Comparing ``finished_at`` with the multirun's start instead fails when a rerun starts
    within the second the previous sweep finished in: timestamps are to the second.)
    """

    @staticmethod
    def _completed(sweep_dir: str) -> dict[Path, str]:
        from fedlab.record.run_dir import RESULTS

        out = {}
        for path in Path(sweep_dir).glob(f"*/{RESULTS}"):
            try:
                results = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if results.get("status") == "completed":
                out[path] = results.get("finished_at") or ""
        return out

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.before = self._completed(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fedlab.record.run_dir import RESULTS

        runs = list(Path(config.hydra.sweep.dir).glob(f"*/{RESULTS}"))
        after = self._completed(config.hydra.sweep.dir)
        skipped = sum(1 for path, at in self.before.items() if after.get(path) == at)
        print(
            f"fedlab: multirun: {len(runs)} runs in {config.hydra.sweep.dir}, "
            f"{skipped} skipped (already completed)"
        )


def _leave_interrupted(run_dir: Path, code: int) -> NoReturn:
    """Exit ``code`` at once after Ctrl-C or a terminating signal; the record already says
    ``interrupted``.

    Flower's ServerApp thread is still waiting for replies from the engine that the signal
    stopped, and would keep the process alive for up to ``simulation.round_timeout_s``;
    nothing is left to write, so the process leaves without joining it. Ray is not shut down
    first: its client threads may still be inside Ray calls, and a shutdown under them can
    crash the driver (fedlab.engines.ray); Ray's processes die with the driver.
    """
    print(
        f"{PROG}: error: interrupted; the record in {run_dir} says how far it got",
        file=REAL_STDERR,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(code)


def condense(text: str) -> str:
    """Hydra's multi-line error report as one line: the key first, then what is allowed."""
    keep: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Set the environment variable", "Config search path")):
            continue
        if line.startswith(("provider=", "full_key:", "object_type=", "reference_type=")):
            continue
        if re.match(r"^(pkg|file|structured)://", line):
            continue
        keep.append(line)
    message = " ".join(keep)
    missing = re.search(
        r"Could not find '([\w/]+)/([^']+)'.*?Available options in '[\w/]+':(.*)", message
    )
    if missing:
        group, option, options = missing.groups()
        return f"{group}: unknown option '{option}'; allowed: {', '.join(options.split())}"
    wrong_type = re.search(
        r"override ([\w.]+)=(\S+) Value .* could not be converted to (\w+)", message
    )
    if wrong_type:
        key, value, kind = wrong_type.groups()
        return f"{key}: expected {kind.lower()}, got '{value}'"
    unknown = re.search(r"Could not override '([\w.]+)'.*(not in '\w+'|not in struct)", message)
    if unknown:
        return f"{unknown.group(1)}: unknown key (fedlab-run --cfg job lists every key)"
    return message or "invalid arguments"


def main() -> None:
    """Console-script entry point: fedlab's own help (:mod:`fedlab.help`, no Hydra) when that
    is all the command line asks for, else the Hydra app."""
    argv = sys.argv[1:]
    if wants_help(argv):
        try:
            print(render_help(conf_root(), [a for a in argv if not a.startswith("-")]))
        except ConfigError as err:  # a conf/config.yaml that Hydra could not read either
            fail(str(err), 2)
        return
    import hydra

    from fedlab.config.schema import register_configs

    register_configs()
    app = hydra.main(version_base="1.3", config_path="pkg://fedlab.conf", config_name="config")
    run_hydra_app(app(_run))
    if Path(sys.argv[0]).name == PROG:
        _exit_now()


def _exit_now() -> None:
    """End the ``fedlab-run`` process at once after a successful run: the exit handlers
    (``atexit``: logging's flush, Ray's shutdown, multiprocessing's clean-up) run, the
    interpreter's teardown does not.

    Tearing down the modules of torch, Flower, Hydra, matplotlib, Captum and the rest costs
    about a second after everything is written (issue #22). Only the console script does
    this (code calling :func:`main` gets it back), and only with no other non-daemon thread
    alive, which a normal exit would have waited for.
    """
    import atexit
    import threading

    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
