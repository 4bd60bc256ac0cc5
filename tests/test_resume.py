"""Exact resume after SIGKILL in both stages, and atomic checkpoint writes under a kill."""
import json
import signal
import subprocess
import sys
import textwrap
import time

import torch
from safetensors.torch import load_file

import tlearn

from conftest import TINY_MODEL, make_folder, run_cli

TRAIN = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4",
         "--strategy", "two-stage", "--head-epochs", "4", "--epochs", "6", "--probe-augment", "default",
         "--workers", "0", "--deterministic", "--no-report", "--seed", "3"]


def _stage_and_epochs(run):
    path = run / "train_state.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    progress = dict((k, v) for k, v in (pair for pair in state["__dict__"][0][1]["__dict__"]))
    return progress["stage_index"], len(progress["rows"])


def _kill_when(command, run, ready, timeout=240):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        status = _stage_and_epochs(run)
        if status is not None and ready(*status):
            time.sleep(0.15)  # into the next epoch
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return _stage_and_epochs(run)


def test_sigkill_in_both_stages_then_resume_is_bit_identical(tmp_path):
    data = make_folder(tmp_path / "data", per_class=12)
    straight = tmp_path / "straight"
    result = run_cli("train", "--data", str(data), *TRAIN, "--out", str(straight))
    assert result.returncode == 0, result.stderr

    run = tmp_path / "interrupted"
    base = [sys.executable, "-m", "tlearn", "train"]
    stage, done = _kill_when(base + ["--data", str(data), *TRAIN, "--out", str(run)], run,
                             lambda stage, rows: stage == 0 and rows >= 1)
    assert stage == 0 and 1 <= done < 4
    stage, done = _kill_when(base + ["--resume", str(run)], run, lambda stage, rows: stage == 1 and rows >= 5)
    assert stage == 1 and done < 10
    result = run_cli("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr

    a, b = load_file(str(straight / "last.safetensors")), load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 10
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 11
    again = run_cli("train", "--resume", str(run))
    assert again.returncode == 2 and "already finished" in again.stderr


SLOW_WRITER = textwrap.dedent("""
    import sys, time
    import tlearn.checkpoint as checkpoint
    real = checkpoint.save_file
    def slow(tensors, path, metadata=None):
        real(tensors, path, metadata)
        open(path + ".writing", "w").close()   # tell the test: a write is under way
        time.sleep(30)                          # ... and stays under way until the kill
    checkpoint.save_file = slow
    from tlearn.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_during_checkpoint_write_leaves_a_loadable_run(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    # first a complete epoch, written normally
    result = run_cli("train", "--data", str(data), "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
                     "--strategy", "finetune", "--epochs", "1", "--no-report", "--out", str(run))
    assert result.returncode == 0, result.stderr
    (run / "summary.json").unlink()  # pretend the run is still going, then resume it with slow writes
    (run / "train_state.json").write_text((run / "train_state.json").read_text())
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 3"))
    before = load_file(str(run / "model.safetensors"))
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WRITER)
    process = subprocess.Popen([sys.executable, str(script), "train", "--resume", str(run)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.glob("*.writing")):
        time.sleep(0.02)
    assert list(run.glob("*.writing")), "no checkpoint write started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(run.glob(".*.tmp")), "the kill should have hit a temporary file"
    after = load_file(str(run / "model.safetensors"))  # still the complete previous file
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained = tlearn.load(run)
    assert trained.class_names == ["cat", "dog", "fox"]
    result = run_cli("train", "--resume", str(run))
    assert result.returncode == 0, result.stderr


def test_ctrl_c_stops_cleanly_with_a_resumable_run(tmp_path):
    data = make_folder(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "tlearn", "train", "--data", str(data), "--model", TINY_MODEL, "--weights",
               "none", "--image-size", "32", "--batch-size", "4", "--strategy", "finetune", "--epochs", "60",
               "--workers", "0", "--no-report", "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and _stage_and_epochs(run) is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert f"tlearn train --resume {run}" in stdout
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "tlearn: interrupted"
    assert not (run / "summary.json").exists()
    assert tlearn.load(run).class_names == ["cat", "dog", "fox"]
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 60", "epochs: 3"))  # finish quickly
    done = _stage_and_epochs(run)[1]
    if done < 3:
        result = run_cli("train", "--resume", str(run))
        assert result.returncode == 0, result.stderr
        assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 3
