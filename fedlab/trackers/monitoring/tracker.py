"""``monitoring=prometheus``: the round metrics served for a Prometheus scraper while the run
lasts (a long or deployed run watched from Grafana, say).

Every numeric ``rounds.csv`` column of the last completed round is a gauge ``fedlab_<column>``
(``fedlab_central_accuracy``, ``fedlab_energy_kwh``, ...), next to ``fedlab_round`` (that
round) and ``fedlab_rounds_total`` (the rounds planned), all labelled ``run`` (the run
directory) and ``strategy``. A column empty in that round (no evaluation, say) reads NaN.
The endpoint is ``http://<monitoring.host>:<monitoring.port>/metrics``, served by
prometheus-client's own HTTP server on a ``CollectorRegistry`` of this run (not the process's
global one: two runs in one process, a Hydra sweep, never share gauges) from the moment the
trackers are built until :meth:`PrometheusTracker.close`. ``monitoring.port=0`` takes any free
port; the ``monitoring`` section of ``results.json`` records the one served.

When a round's values appear: at the end of the round (:meth:`end_round`) with every column
of the trackers that ran before this one, which in the default config is every tracker that
adds round columns (it is configured after them); the row is published again, complete with
the columns of trackers a user added after it, when the next round starts and when the run
closes. So a scrape never waits for the next round, and no column is missing for longer than
one round.

Bad input: a port already in use (or a host that cannot be bound) is refused when the config is
checked, before anything is written, in one line naming ``monitoring.port``
(``monitoring.host``), exit 2.
"""

from __future__ import annotations

import errno
import math
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedlab.config.schema import ConfigError
from fedlab.record.reader import number
from fedlab.record.run_dir import ROUND_COLUMNS, read_csv
from fedlab.trackers.base import RoundContext, RunContext, Tracker
from fedlab.trackers.registry import columns, tracker_specs

if TYPE_CHECKING:
    from fedlab.config.experiment import Experiment

PREFIX = "fedlab_"
LABELS = ("run", "strategy")


def metric_name(column: str) -> str:
    """``fedlab_<column>`` with anything Prometheus does not allow in a name as ``_``."""
    return PREFIX + re.sub(r"[^a-zA-Z0-9_]", "_", column)


def probe(host: str, port: int) -> None:
    """Raise :class:`ConfigError` if ``host:port`` cannot be bound now (the server binds the
    same way: ``SO_REUSEADDR`` as Python's HTTP servers set it, so only a listening socket, not
    a closed connection in TIME_WAIT, counts as in use)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConfigError("monitoring.host", f"cannot resolve '{host}': {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "monitoring.port",
                    f"{host}:{port} is already in use; choose a free port (0: any free one)",
                ) from None
            raise ConfigError(
                "monitoring.host", f"cannot serve on {host}:{port}: {err.strerror}"
            ) from None


class PrometheusTracker(Tracker):
    """Serves the last completed round's metrics (module docstring); inactive unless
    ``monitoring.backend`` is ``prometheus``."""

    name: ClassVar[str] = "monitoring"

    def __init__(
        self, host: str, port: int, run: str, strategy: str, schema: list[str], num_rounds: int,
        run_dir: Path | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.host, self.run_dir = host, run_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"run": run, "strategy": strategy}
        self.schema = [c for c in schema if c != "round"]
        self.gauges: dict[str, Any] = {}
        self._gauge = Gauge
        self.round = self._new("fedlab_round", "the last completed round (0: the initial model)")
        self.total = self._new("fedlab_rounds_total", "rounds the run is configured for")
        self.total.set(num_rounds)
        self.row: Mapping[str, Any] | None = None
        self.served_round: int | None = None
        try:
            self.server, self.thread = start_http_server(port, host, registry=self.registry)
        except OSError as err:  # taken between check() and now
            raise ConfigError(
                "monitoring.port", f"cannot serve on {host}:{port}: {err.strerror}"
            ) from None
        self.port = int(self.server.server_address[1])
        self.closed = False

    def _new(self, name: str, documentation: str) -> Any:
        gauge = self._gauge(name, documentation, LABELS, registry=self.registry)
        return gauge.labels(**self.labels)

    @classmethod
    def check(cls, exp: Experiment) -> None:
        options = dict(exp.cfg.trackers.get(cls.name) or {})
        options.pop("_target_", None)
        if options:
            key = next(iter(options))
            raise ConfigError(
                f"trackers.{cls.name}.{key}",
                "unknown option: the monitoring settings are monitoring.host and monitoring.port",
            )
        monitoring = exp.cfg.monitoring
        if monitoring.backend == "prometheus" and monitoring.port != 0:
            probe(monitoring.host, monitoring.port)

    @classmethod
    def build(cls, run: RunContext, **options: Any) -> PrometheusTracker | None:
        cfg = run.exp.cfg
        if cfg.monitoring.backend != "prometheus":
            return None
        schema = columns(ROUND_COLUMNS, tracker_specs(cfg.trackers), "round", run.exp)
        return cls(cfg.monitoring.host, cfg.monitoring.port, str(run.run_dir), cfg.strategy.name,
                   schema, cfg.num_rounds, run.run_dir)

    def publish(self, row: Mapping[str, Any]) -> None:
        """Set every gauge from one ``rounds.csv`` row (values or the CSV's strings)."""
        served = number(row.get("round"))
        if served is None:
            return
        self.round.set(served)
        self.served_round = int(served)
        for column in self.schema:
            value = number(row.get(column))
            if column not in self.gauges:
                if value is None:
                    continue  # a column never numeric so far is not served
                self.gauges[column] = self._new(
                    metric_name(column), f"rounds.csv column '{column}' of the last round"
                )
            self.gauges[column].set(math.nan if value is None else value)

    def start_round(self, server_round: int) -> None:
        if self.row is not None:  # the previous round, now complete
            self.publish(self.row)
            return
        path = self.run_dir / "rounds.csv" if self.run_dir is not None else None
        if path is not None and path.is_file():  # round 0, or the last round before a resume
            rows = read_csv(path)
            if rows:
                self.publish(rows[-1])

    def end_round(self, ctx: RoundContext) -> dict[str, Any]:
        self.row = ctx.row  # the same dict later trackers add to: complete by start_round
        self.publish(ctx.row)
        return {}

    def summary(self) -> dict[str, Any]:
        return {
            "backend": "prometheus",
            "host": self.host,
            "port": self.port,
            "url": f"http://{self.host}:{self.port}/metrics",
            "last_round_served": self.served_round,
            "metrics": [metric_name(c) for c in self.gauges],
        }

    def close(self) -> dict[str, Any]:
        """Publish the final row complete, then stop serving (the port is free again)."""
        if not self.closed:
            if self.row is not None:
                self.publish(self.row)
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.closed = True
        return {**self.summary(), "stopped": True}
