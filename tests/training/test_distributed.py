"""The same command under torchrun: two CPU processes (gloo), one writer, exact metrics, and
feature extraction sharded into the cache entry a single process writes."""
import json
import os
import subprocess
import sys

import numpy as np

import tlearn

from conftest import TINY_MODEL, make_folder

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# two-stage on tiny images: one probe epoch, two fine-tuning epochs, on the CPU, decoding inline
TWO_STAGE = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4",
             "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "2", "--device", "cpu", "--workers", "0"]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` as two CPU processes of one thread each."""
    return subprocess.run(TORCHRUN + list(args), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def test_torchrun_two_processes_train_and_report_unpadded_metrics(tmp_path):
    data = make_folder(tmp_path / "data", per_class=9, split_dirs=True)  # 7 val images: odd on purpose
    out = tmp_path / "run"
    result = _torchrun("-m", "tlearn", "train", "--data", str(data), *TWO_STAGE, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("stage 2 finetune") == 1  # one process talks
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["num_val"] == 9
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4
    # the saved model, evaluated by one process, scores what the two processes reported together
    single = tlearn.evaluate(out, str(data), split="val", device="cpu")
    assert single["count"] == 9
    assert abs(single["top1"] - summary["val_top1"]) < 1e-9


def test_torchrun_extracts_feature_shards_into_the_single_process_cache_entry(tmp_path):
    # 135 train images = batches of 64 + 64 + 7: rank 0 takes the first and the short last, rank 1
    # the middle one; the 45 val images are one batch, so rank 1's val shard is empty.
    data = make_folder(tmp_path / "data", per_class=60, split_dirs=True)
    args = ["-m", "tlearn", "train", "--data", str(data), "--model", TINY_MODEL, "--weights", "none",
            "--image-size", "32", "--batch-size", "4", "--strategy", "linear-probe", "--epochs", "1",
            "--device", "cpu", "--workers", "0"]
    sharded = _torchrun(*args, "--cache-dir", str(tmp_path / "sharded"), "--out", str(tmp_path / "a"))
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "shards of 71 + 64 images over 2 processes" in sharded.stdout  # rank 1 computed its batch
    assert "shards of 45 + 0 images over 2 processes" in sharded.stdout
    single = subprocess.run([sys.executable, *args, "--cache-dir", str(tmp_path / "single"),
                             "--out", str(tmp_path / "b")],
                            check=False, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    entries = sorted(path.name for path in (tmp_path / "single" / "features").iterdir())
    assert len(entries) == 2
    assert sorted(path.name for path in (tmp_path / "sharded" / "features").iterdir()) == entries
    for name in entries:  # the whole .npy files, header and features: bit for bit, -0.0 too
        sharded_bytes = (tmp_path / "sharded" / "features" / name).read_bytes()
        assert sharded_bytes == (tmp_path / "single" / "features" / name).read_bytes()
        assert len(np.load(tmp_path / "sharded" / "features" / name)) in (135, 45)


def test_torchrun_with_every_fine_tuning_technique_on(tmp_path):
    """LR finder, gradual unfreezing with layer decay, policy augmentation, random erasing, mixup and
    cutmix, EMA and accumulation together under two processes: one sweep result, one writer, and
    the saved (averaged) weights score what the processes reported together."""
    data = make_folder(tmp_path / "data", per_class=9, split_dirs=True)
    out = tmp_path / "run"
    result = _torchrun("-m", "tlearn", "train", "--data", str(data), *TWO_STAGE, "--lr", "find",
                       "--unfreeze", "gradual", "--layer-decay", "0.75", "--augment", "trivialaugment",
                       "--random-erasing", "0.25", "--mixup", "0.2", "--cutmix", "1.0", "--ema-decay", "0.9",
                       "--accumulate", "2", "--no-report", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("stage 2 finetune") == 1  # one process talks
    import yaml

    found = yaml.safe_load((out / "config.yaml").read_text())["resolved"]["lr_found"]
    assert found["lr"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 3
    single = tlearn.evaluate(out, str(data), split="val", device="cpu")
    assert abs(single["top1"] - summary["val_top1"]) < 1e-9
