"""`--track mlflow`, read back through MLflow's own client: the resolved config as params, every
epoch's metrics at its step, the summary and the run's files; a killed and resumed run continues
the same MLflow run; a store that cannot be reached is one warning and the run finishes."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tlearn

from conftest import KILLER, TINY_MODEL, run_cli

mlflow = pytest.importorskip("mlflow", reason="--track mlflow needs mlflow (the track extra)")
from mlflow.tracking import MlflowClient  # noqa: E402

TRAIN = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--seed", "1", "--head-epochs", "1",
         "--no-report", "--track", "mlflow"]


def _runs(store: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("tlearn")
    return client, client.search_runs([experiment.experiment_id])


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_fit_logs_params_every_epoch_the_summary_and_the_files(image_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "runs" / "tracked"
    model = tlearn.create_model(TINY_MODEL, num_classes=3, weights="none")
    summary = tlearn.fit(model, str(image_folder), out=out, strategy="two-stage", head_epochs=1, epochs=2,
                         image_size=32, report=False, track="mlflow")
    client, runs = _runs(tmp_path / "runs" / "mlflow.db")  # the default store: beside the run folders
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    logged = runs[0]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert logged.data.params["train.epochs"] == "2" and logged.data.params["train.track"] == "mlflow"
    assert logged.data.params["resolved.lr"] == str(config["resolved"]["lr"])
    history = client.get_metric_history(logged.info.run_id, "val_loss")
    rows = _metrics_rows(out)
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [int(row["epoch"]) for row in rows] == [1, 2, 3]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [float(row["val_loss"]) for row in rows], rel=1e-5)
    assert logged.data.metrics["summary.val_top1"] == summary["val_top1"]
    assert logged.data.metrics["summary.best_epoch"] == summary["best_epoch"]
    files = {artifact.path for artifact in client.list_artifacts(logged.info.run_id)}
    assert {"summary.json", "metrics.csv", "config.yaml", "model.json", "model.safetensors"} <= files
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # artifacts beside the runs too, not in the cwd


def test_a_killed_run_resumes_into_the_same_mlflow_run(image_folder, tmp_path):
    run = tmp_path / "runs" / "run"
    env = {"MLFLOW_TRACKING_URI": ""}
    first = subprocess.run([sys.executable, str(KILLER), "commit:2", "train", "--data", str(image_folder), *TRAIN,
                            "--epochs", "2", "--out", str(run)], capture_output=True, text=True, timeout=600,
                           env={**os.environ, **env})
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    done = run_cli("train", "--resume", str(run), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    client, runs = _runs(tmp_path / "runs" / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    rows = _metrics_rows(run)
    for key in ("train_loss", "val_loss", "val_top1"):
        history = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [int(row["epoch"]) for row in rows] == [1, 2, 3]  # none twice
        assert [m.value for m in history] == pytest.approx([float(row[key]) for row in rows], rel=1e-5)
    assert runs[0].data.metrics["summary.val_top1"] == json.loads((run / "summary.json").read_text())["val_top1"]
    assert (tmp_path / "runs" / "mlartifacts").is_dir()  # an empty MLFLOW_TRACKING_URI is no URI at all


def test_an_unreachable_tracking_server_is_one_warning(image_folder, tmp_path):
    out = tmp_path / "run"
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    done = run_cli("train", "--data", str(image_folder), *TRAIN, "--epochs", "1", "--out", str(out), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and "training goes on without tracking" in warnings[0], done.stdout[-2000:]
    assert (out / "summary.json").is_file()
