"""`--track mlflow`: the run in MLflow. The resolved config as params, every committed epoch's
metrics row at its epoch as the step, and at the end the summary's figures and the run folder's
report, metrics and model files as artifacts.

The store is MLFLOW_TRACKING_URI when it is set; otherwise a SQLite file beside the run folders
(RUN/../mlflow.db, artifacts in RUN/../mlartifacts): no server needed. A resumed run continues the
MLflow run tagged with its folder, from the first epoch that run has not logged. Only the process
that writes the run folder logs (rank 0 under torchrun: the runner opens the tracker there). A
store that cannot be written is one warning, and training goes on without it.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ...errors import ConfigError, first_line
from .._events import Callback

if TYPE_CHECKING:
    from .._loop import Loop
    from ..state import Progress

logger = logging.getLogger(__name__)

EXPERIMENT = "tlearn"
RUN_TAG = "tlearn.run_dir"
ARTIFACTS = ("summary.json", "metrics.csv", "config.yaml", "model.json", "model.safetensors", "calibration.json",
             "report.html", "curves.png", "confusion.png", "reliability.png")
STEP_METRIC = "train_loss"  # every row has it: its history says which epochs were logged


def tracking_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve().parent / 'mlflow.db'}"


def flat_params(raw: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as text (MLflow keeps 6000 characters)."""
    params = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = str(value)[:6000]
    return params


class MlflowTracker(Callback):
    """One MLflow run for one tlearn run folder; after EpochCommit in the loop's list."""

    def __init__(self, run_dir: Path, progress: Progress, params: dict[str, Any], resumed: bool) -> None:
        self.run_dir, self.progress = Path(run_dir).resolve(), progress
        self.client = self.run_id = None
        self.logged_epochs = 0
        self._guard("open the tracking store", lambda: self._open(params, resumed))

    @classmethod
    def for_run(cls, run_dir: Path, progress: Progress, resumed: bool) -> MlflowTracker:
        """The tracker of a run folder whose config.yaml (with its resolved values) is written."""
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError('--track mlflow needs the mlflow package: pip install "tlearn[track]"') from None
        params = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8")) or {}
        return cls(run_dir, progress, params, resumed)

    def _open(self, params: dict[str, Any], resumed: bool) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri(self.run_dir))
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            local = not os.environ.get("MLFLOW_TRACKING_URI")  # an empty one is unset, as tracking_uri reads it
            where = (self.run_dir.parent / "mlartifacts").as_uri() if local else None
            experiment_id = client.create_experiment(EXPERIMENT, artifact_location=where)
        earlier = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{self.run_dir}'",
                                     order_by=["attributes.start_time DESC"], max_results=1) if resumed else []
        if earlier:
            self.run_id = earlier[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            history = client.get_metric_history(self.run_id, STEP_METRIC)
            self.logged_epochs = max((metric.step for metric in history), default=0)
        else:
            self.run_id = client.create_run(experiment_id, tags={RUN_TAG: str(self.run_dir)},
                                            run_name=self.run_dir.name).info.run_id
            from mlflow.entities import Param

            items = [Param(key, value) for key, value in flat_params(params).items()]
            for start in range(0, len(items), 100):  # MLflow takes 100 params a batch
                client.log_batch(self.run_id, params=items[start:start + 100])
        self.client = client
        logger.info(f"tracking in MLflow: run {self.run_id} at {tracking_uri(self.run_dir)}")

    def _guard(self, what: str, action) -> None:
        """Run a tracking call; the first failure is one warning and ends the tracking."""
        if what != "open the tracking store" and self.client is None:
            return
        try:
            action()
        except Exception as error:  # noqa: BLE001 - any store failure: training must go on
            logger.warning(f"MLflow: cannot {what} ({first_line(error, 160)}); training goes on without tracking")
            self.client = None

    def after_epoch(self, loop: Loop) -> None:
        self.write_rows()

    def write_rows(self) -> None:
        """Every committed metrics row the MLflow run has not seen (a resumed run's first ones too)."""
        rows = [row for row in self.progress.rows if row["epoch"] > self.logged_epochs]
        if rows:
            self._guard("log the epoch's metrics", lambda: self._log_rows(rows))

    def _log_rows(self, rows: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, row["epoch"]) for row in rows for key, value in row.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        self.logged_epochs = rows[-1]["epoch"]

    def finish(self, summary: dict[str, Any]) -> None:
        """The summary's figures (as summary.*), the run folder's files as artifacts, the run ended."""
        self.write_rows()
        self._guard("log the summary and the run's files", lambda: self._finish(summary))

    def _finish(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        figures = [Metric(f"summary.{key}", float(value), int(time.time() * 1000), 0) for key, value in summary.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool)]
        self.client.log_batch(self.run_id, metrics=figures)
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        self.client.set_terminated(self.run_id, "FINISHED")
