"""Exact resume after SIGKILL anywhere, and Ctrl-C with a resumable run."""
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tlearn
from tlearn.run_folder import checkpoint

from conftest import KILLER, TINY_MODEL, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--deterministic", "--no-report", "--seed", "3"]

TIMING_COLUMNS = ("seconds", "images_per_s", "data_seconds", "compute_seconds", "optimizer_seconds",
                  "eval_seconds")

# Kill points, in order, each in a new process that resumes the last; together they cover
# the probe (on images, or cached features with the L-BFGS solve), a stage boundary, every
# step of a commit, and fine-tuning epochs. See kill_points.py for what each event means.
CHAINS = {
    "sgd probe on images": (
        ["--strategy", "two-stage", "--head-epochs", "3", "--epochs", "3", "--probe-augment", "default"],
        ["step:3",      # mid-epoch 1 of the probe, nothing committed yet: the resume starts again
         "state:2",     # inside the commit of epoch 2: epoch 1 stays committed
         "commit:2",    # epochs 2 and 3 committed (the probe's end), derived files not yet written
         "step:4",      # mid fine-tune epoch 4, after a resume at the stage boundary
         "last:2",      # epoch 4 committed and its last.safetensors written; inside epoch 5's
         "commit:1"],   # epoch 6 committed, derived files not written; the final resume finishes
        3),
    "L-BFGS probe on cached features": (
        ["--strategy", "two-stage", "--epochs", "3"],
        ["cache:1",     # inside the first feature-cache write
         "solve:1",     # features extracted and cached, the head solve not started
         "commit:1",    # the solve committed as the probe's one epoch, derived files not written
         "step:5",      # mid fine-tune epoch 2 (the first of the fine-tune stage)
         "state:2"],    # epoch 2 committed; inside the commit of epoch 3
        3),
}


def _tlearn(event: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KILLER), event, *args], capture_output=True, text=True,
                          timeout=300)


def _rows_without_timing(run: Path) -> list[dict]:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def _assert_committed_state_matches(run: Path, snapshots: Path, event: str) -> None:
    """The committed epoch's weights, optimiser, RNG and progress equal the uninterrupted run's."""
    progress = checkpoint.read_progress(run)
    if progress is None:
        return  # killed before the first commit: the resume starts the run again
    epoch = len(progress["rows"])
    committed = load_file(str(run / checkpoint.STATE_FILE))
    expected = load_file(str(snapshots / f"epoch-{epoch}.safetensors"))
    assert committed.keys() == expected.keys(), event
    different = [k for k in committed if not torch.equal(committed[k], expected[k])]
    assert not different, f"after the kill at {event}, epoch {epoch} differs in {different[:5]}"
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):  # derived: never ahead of the commit
        tagged = checkpoint.weights_epoch(run / name)
        assert tagged is None or tagged <= epoch, (event, name, tagged, epoch)
    if (run / checkpoint.MODEL_FILE).is_file():  # an interrupted run is usable as it stands
        assert tlearn.load(run).class_names == ["cat", "dog", "fox"]


@pytest.mark.parametrize("chain", list(CHAINS))
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path, chain):
    args, kills, fine_tune_epochs = CHAINS[chain]
    data = make_folder(tmp_path / "data", per_class=10)
    reference, run = tmp_path / "reference" / "run", tmp_path / "interrupted" / "run"
    train_args = ["--data", str(data), *TINY, *args]
    result = _tlearn("record:0", "train", *train_args, "--out", str(reference),
                     "--cache-dir", str(reference.parent / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    snapshots = reference.parent / "snapshots"

    for number, event in enumerate(kills):
        command = ["train", *train_args, "--out", str(run), "--cache-dir", str(run.parent / "cache")] \
            if number == 0 else ["train", "--resume", str(run)]
        result = _tlearn(event, *command)
        assert result.returncode == -signal.SIGKILL, f"{event} was never reached: {result.stderr[-2000:]}"
        _assert_committed_state_matches(run, snapshots, event)
    result = _tlearn("none:0", "train", "--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]

    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    assert _rows_without_timing(run) == _rows_without_timing(reference)
    summary, expected = (json.loads((folder / "summary.json").read_text()) for folder in (run, reference))
    assert [s["name"] for s in summary["stages"]] == ["linear-probe", "finetune"]
    assert summary["epochs_completed"] == expected["epochs_completed"] == len(_rows_without_timing(run))
    assert summary["stages"][1]["epochs"] == fine_tune_epochs
    assert (summary["val_top1"], summary["best_epoch"]) == (expected["val_top1"], expected["best_epoch"])
    again = run_cli("train", "--resume", str(run))
    assert again.returncode == 2 and "already finished" in again.stderr


def _default_sigint():
    """The child must get SIGINT even when this test runs under a parent that ignores it
    (a shell's background job does): an ignored SIGINT is inherited across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_with_a_resumable_run(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tlearn", "train", "--data", str(data), "--model", TINY_MODEL, "--weights",
               "none", "--image-size", "32", "--batch-size", "4", "--strategy", "finetune", "--epochs", "60",
               "--workers", "0", "--no-report", "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and checkpoint.read_progress(run) is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert f"tlearn train --resume {run}" in stdout
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "tlearn: interrupted"
    assert not (run / "summary.json").exists()
    assert tlearn.load(run).class_names == ["cat", "dog", "fox"]
    done = len(checkpoint.read_progress(run)["rows"])
    assert 1 <= done < 60
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 60", f"epochs: {done + 1}"))  # one more epoch
    result = run_cli("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == done + 1
