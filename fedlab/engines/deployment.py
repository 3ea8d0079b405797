"""fedlab on Flower's Deployment Engine: the same ServerApp and ClientApp, run by ``flwr run``.

``pyproject.toml`` names :data:`serverapp` and :data:`clientapp` as the app's components. The
experiment travels in the run config as ``fedlab-run``'s Hydra overrides (the key
``overrides``, e.g. ``"strategy=fedprox num_clients=2 num_rounds=2"``), so a deployed run and a
simulated one with the same overrides are the same experiment:

* the ServerApp (on the SuperLink's machine) composes the config, validates it, prepares the
  data and opens the run record exactly as ``fedlab-run`` does
  (:func:`fedlab.run.run_experiment`), then runs :func:`fedlab.fl.server_app.run_server` over
  Flower's Grid; the record lands in the run config's ``run-dir``
  (default ``outputs/deployment/<run id>``, relative to the SuperLink's working directory);
* each SuperNode's ClientApp composes the same config, partitions the data itself (the
  partition is deterministic given the seed) and keeps the result in a cache directory keyed
  by the config's hash, so it is prepared once per node, not once per message. Its partition
  is the node config's ``partition-id``; the cache directory is the node config's
  ``cache-dir``, else ``$FEDLAB_CACHE_DIR``, else ``~/.cache/fedlab``.

docs/deployment.md is the recipe (certificates, SuperLink, SuperNodes, ``flwr run``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from fedlab.config.schema import ConfigError
from fedlab.fl.client_app import ClientSpec, build_client_app

log = logging.getLogger("fedlab")

OVERRIDES_KEY = "overrides"
RUN_DIR_KEY = "run-dir"
PULL_INTERVAL_KEY = "pull-interval-s"
CACHE_DIR_KEY = "cache-dir"  # node config
CACHE_ENV = "FEDLAB_CACHE_DIR"


def conf_dir() -> Path | None:
    """The ``conf/`` shipped with this copy of fedlab, if it lies beside the code.

    ``flwr run`` ships fedlab/ and conf/ in the app bundle and Flower imports the bundle's
    copy first, so the config must come from the same bundle (a source checkout has the same
    layout). An installed package keeps it as ``fedlab/conf``; None: use ``fedlab.conf``.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def compose_config(overrides: list[str]) -> DictConfig:
    """The config ``fedlab-run <overrides>`` would run, composed with Hydra's compose API."""
    from hydra import compose, initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from fedlab.config.schema import register_configs

    register_configs()
    directory = conf_dir()
    GlobalHydra.instance().clear()
    init = (
        initialize_config_dir(config_dir=str(directory), version_base="1.3")
        if directory is not None
        else initialize_config_module(config_module="fedlab.conf", version_base="1.3")
    )
    try:
        with init:
            return compose(config_name="config", overrides=overrides)
    except Exception as err:  # Hydra's composition errors: one line naming the override
        raise ConfigError(OVERRIDES_KEY, str(err).strip().splitlines()[0]) from None


def overrides_of(run_config: Any) -> list[str]:
    """The Hydra overrides in a run config (a shell-quoted string)."""
    overrides = shlex.split(str(run_config.get(OVERRIDES_KEY, "") or ""))
    if any(o.startswith(("hydra.", "+hydra.", "resume=")) for o in overrides):
        raise ConfigError(
            OVERRIDES_KEY,
            "hydra.* and resume are not supported on the Deployment Engine "
            f"(set the record's directory with --run-config '{RUN_DIR_KEY}=\"...\"')",
        )
    return overrides


def config_hash(raw: DictConfig) -> str:
    """A short hash of the resolved config: the key of a node's prepared data."""
    return hashlib.sha256(OmegaConf.to_yaml(raw, resolve=True).encode()).hexdigest()[:16]


def _cache_dir(context: Context) -> Path:
    configured = context.node_config.get(CACHE_DIR_KEY) or os.environ.get(CACHE_ENV)
    return Path(str(configured)) if configured else Path.home() / ".cache" / "fedlab"


def cached_federation(exp: Any, raw: DictConfig, cache_dir: Path) -> Path:
    """Partition the data once per node and config; later messages read the saved copy.

    Written to a temporary name and renamed, so concurrent ClientApp processes (or two
    SuperNodes sharing a machine) never read a half-written file.
    """
    from fedlab.record.run_dir import atomic_path

    path = cache_dir / f"federation-{config_hash(raw)}.npz"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            exp.load_data().save(tmp)
    return path


_specs: dict[tuple[int, str], ClientSpec] = {}


def client_spec(context: Context) -> ClientSpec:
    """This node's :class:`ClientSpec` for the run, derived from its run config.

    Flower starts a ClientApp process per message; within one process the spec is derived
    once per run (the clipping mod and the handler both ask for it).
    """
    from fedlab.config.experiment import Experiment
    from fedlab.run import _client_spec

    overrides = overrides_of(context.run_config)
    key = (context.run_id, shlex.join(overrides))
    if key not in _specs:
        raw = compose_config(overrides)
        exp = Experiment.from_config(raw)
        cache = _cache_dir(context)
        # a stateful algorithm's per-client state stays on this node, one folder per run
        state = cache / "client_state" / f"run-{context.run_id}"
        _specs[key] = _client_spec(exp, cached_federation(exp, raw, cache), state)
    return _specs[key]


class PollingGrid:
    """Flower's deployment Grid, polling for replies every ``interval`` seconds.

    Flower's ``send_and_receive`` sleeps 3 s between pulls, which would add up to 3 s to every
    phase of every round; this one uses the Grid's own ``push_messages`` and ``pull_messages``.
    """

    def __init__(self, grid: Grid, interval: float) -> None:
        self._grid = grid
        self.interval = interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            pulled = list(self._grid.pull_messages(pending))
            replies.extend(pulled)
            pending -= {m.metadata.reply_to_message_id for m in pulled}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies


def _log_to_stderr() -> None:
    """fedlab's progress lines in the ServerApp's output (what ``flwr log`` shows).

    Flower's strategy summaries are dropped, as ``fedlab-run`` drops them; its warnings stay.
    """
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    logging.getLogger("flwr").setLevel(logging.WARNING)


def run_dir_of(context: Context) -> Path:
    """Where the ServerApp writes the run record."""
    configured = str(context.run_config.get(RUN_DIR_KEY, "") or "")
    return Path(configured or f"outputs/deployment/{context.run_id}").expanduser().resolve()


serverapp = ServerApp()


@serverapp.main()
def _server_main(grid: Grid, context: Context) -> None:
    """Compose, validate, prepare and record as ``fedlab-run`` does; run over Flower's Grid."""
    from fedlab.fl.server_app import run_server
    from fedlab.run import run_experiment

    _log_to_stderr()
    overrides = overrides_of(context.run_config)
    raw = compose_config(overrides)
    run_dir = run_dir_of(context)
    interval = float(context.run_config.get(PULL_INTERVAL_KEY, 0.1))
    polling = PollingGrid(grid, interval)

    def engine(exp: Any, fed: Any, record: Any, trackers: Any, saved: Any) -> None:
        from flwr.supercore.exit import add_exit_handler

        def stopped() -> None:
            """`flwr stop` (or a signal) ends this process through Flower's exit handlers."""
            if record.results.get("status") == "running":
                record.finish("interrupted", error="stopped: flwr stop or a signal")

        add_exit_handler(stopped, run_before_force_exit=True)
        run_server(polling, exp, fed, record, trackers, saved)

    log.info("fedlab: Flower run %s, record: %s", context.run_id, run_dir)
    run_experiment(raw, run_dir, overrides, engine=engine)


clientapp = build_client_app(client_spec)
