"""The schema of the ``tracking`` and ``monitoring`` groups: where a run is reported while it
runs, besides its own record (both off by default; the run directory is always written)."""

from __future__ import annotations

from dataclasses import dataclass

from fedlab.config.errors import require, require_choice


@dataclass
class TrackingConfig:
    """``tracking=mlflow``: every run is also an MLflow run (docs/tracking.md).

    ``uri`` is an MLflow tracking URI: a local store (a directory, or ``sqlite:///FILE``) or a
    tracking server (``http://host:5000``). A store that cannot be reached warns once and the
    run goes on without it.
    """

    backend: str = "none"
    uri: str = "sqlite:///mlruns.db"
    experiment: str = "fedlab"
    log_model: bool = True  # the final global model as an MLflow PyTorch model
    log_artifacts: bool = True  # the run directory's files, plots and model card
    # the most the end of a run waits for the store to take the record (a slow server);
    # the rounds themselves never wait for it
    wait_s: float = 120.0

    def __post_init__(self) -> None:
        require_choice(self.backend, "tracking.backend", ("none", "mlflow"))
        if self.backend != "none":
            require(bool(self.uri), "tracking.uri", "must name a store (a directory, "
                    "sqlite:///FILE or a server URI)")
            require(bool(self.experiment), "tracking.experiment", "must be a non-empty name")
        require(self.wait_s > 0, "tracking.wait_s", f"must be > 0 seconds, got {self.wait_s}")


@dataclass
class MonitoringConfig:
    """``monitoring=prometheus``: the round metrics served on ``host:port`` for a scraper
    (a long or deployed run watched from Grafana, say)."""

    backend: str = "none"
    host: str = "127.0.0.1"
    port: int = 9464

    def __post_init__(self) -> None:
        require_choice(self.backend, "monitoring.backend", ("none", "prometheus"))
        require(0 <= self.port <= 65535, "monitoring.port",
                f"must be a TCP port in 0..65535 (0: any free port), got {self.port}")
