"""Early stopping: the rule, the epoch it stops at, summary.json, exact resume, torchrun.

The runs train with a learning rate of 1e-9 and --min-delta 0.01: the validation metrics
cannot move by 0.01, so the first epoch of a stage is its best and the stage stops after
exactly 1 + patience epochs, never by chance.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tlearn.metrics.classification import EvalResult
from tlearn.run_folder import checkpoint
from tlearn.training.callbacks.early_stopping import observe

from conftest import TINY_MODEL, kill_chain, make_folder

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--no-report"]
FROZEN = ["--lr", "1e-9", "--min-delta", "0.01"]


def _stages(run: Path) -> list[dict]:
    return json.loads((run / "summary.json").read_text())["stages"]


def _metric_rows(run: Path) -> list[tuple[str, str]]:
    return [(row["stage"], row["stage_epoch"]) for row in csv.DictReader((run / "metrics.csv").open())]


@pytest.mark.parametrize("monitor,values,expected", [
    ("val_loss", [1.0, 0.9, 0.95, 0.89, 0.9], [(1.0, 0), (0.9, 0), (0.9, 1), (0.89, 0), (0.89, 1)]),
    ("val_top1", [0.5, 0.5, 0.6, 0.55], [(0.5, 0), (0.5, 1), (0.6, 0), (0.6, 1)]),
])
def test_observe_counts_epochs_without_improvement(monitor, values, expected):
    best, waited, seen = None, 0, []
    for value in values:
        best, waited = observe(best, waited, value, monitor, 0.0)
        seen.append((best, waited))
    assert seen == expected


def test_min_delta_must_be_beaten_and_balanced_accuracy():
    assert observe(1.0, 0, 0.995, "val_loss", 0.01) == (1.0, 1)  # better, but not by more than 0.01
    assert observe(1.0, 2, 0.98, "val_loss", 0.01) == (0.98, 0)
    assert observe(0.5, 0, 0.51, "val_balanced_acc", 0.01) == (0.5, 1)
    # 3 classes, the last without validation images: the mean recall of the other two
    result = EvalResult(0.0, 0.0, 0.0, 5, [[3, 1, 0], [0, 1, 0], [0, 0, 0]], [0.75, 1.0, 0.0])
    assert result.balanced_accuracy == pytest.approx(0.875)


def test_each_stage_stops_after_patience_epochs_and_the_next_starts_as_planned(tmp_path):
    """Probe (mini-batch head on cached features) 6 epochs planned, stops after 3; fine-tuning
    2 planned, runs 2 (patience is never exhausted); an L-BFGS probe is one solve regardless."""
    from tlearn.cli import main

    data = make_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, *FROZEN, "--strategy", "two-stage", "--head-solver", "sgd",
                 "--head-epochs", "6", "--epochs", "2", "--patience", "2", "--monitor", "val_top1",
                 "--out", str(run)]) == 0
    stages = _stages(run)
    assert [(s["name"], s["epochs"], s["stopped_early"]) for s in stages] == [
        ("linear-probe", 3, True), ("finetune", 2, False)]
    assert _metric_rows(run) == [("linear-probe", "1"), ("linear-probe", "2"), ("linear-probe", "3"),
                                 ("finetune", "1"), ("finetune", "2")]
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 5
    lbfgs = tmp_path / "lbfgs"
    assert main(["train", "--data", str(data), *TINY, "--strategy", "linear-probe", "--patience", "1",
                 "--out", str(lbfgs)]) == 0
    assert [(s["epochs"], s["stopped_early"], s["solver"]) for s in _stages(lbfgs)] == [(1, False, "lbfgs")]


def test_a_metric_the_task_lacks_is_one_line_before_training(tmp_path, capsys):
    from tlearn.cli import main

    data = make_folder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--patience", "2", "--monitor", "val_map",
                 "--out", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--monitor val_map needs multi-label data" in lines[0]
    assert not (run / "metrics.csv").exists()



def test_killed_in_the_middle_of_a_patience_run_resumes_to_the_same_result(tmp_path):
    """Both stages stop after 3 of 6 epochs (patience 2). Kills: when the probe's stopping epoch is
    committed (the resume must go on to fine-tuning, not finish the probe), and after fine-tuning's
    second epoch is committed (one epoch without improvement is on the count, which must survive:
    forgotten, fine-tuning would run 4 epochs)."""
    data = make_folder(tmp_path / "data", per_class=8)
    train = ["--data", str(data), *TINY, *FROZEN, "--deterministic", "--seed", "5", "--strategy", "two-stage",
             "--probe-augment", "default", "--head-epochs", "6", "--epochs", "6", "--patience", "2"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(train, ["commit:3", "commit:2"], reference, run)
    assert [(s["epochs"], s["stopped_early"]) for s in _stages(reference)] == [(3, True), (3, True)]
    assert _stages(run) == _stages(reference)
    assert _metric_rows(run) == _metric_rows(reference)
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"


def test_torchrun_ranks_stop_together(tmp_path):
    """Two processes, each validating its own shard: the summed metrics decide for both, so both
    leave the stage after the same epoch (a rank that went on would hang the other)."""
    data = make_folder(tmp_path / "data", per_class=9, split_dirs=True)
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(torchrun + ["-m", "tlearn", "train", "--data", str(data), *TINY, *FROZEN,
                                        "--strategy", "finetune", "--epochs", "5", "--patience", "1",
                                        "--device", "cpu", "--out", str(run)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(s["epochs"], s["stopped_early"]) for s in _stages(run)] == [(2, True)]
    assert result.stdout.count("early stop") == 1  # one process talks
