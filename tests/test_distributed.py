"""The same command under torchrun: two CPU processes (gloo), one writer, exact metrics."""
import json
import os
import subprocess
import sys

import tlearn

from conftest import TINY_MODEL, make_folder


def test_torchrun_two_processes_train_and_report_unpadded_metrics(tmp_path):
    data = make_folder(tmp_path / "data", per_class=9, split_dirs=True)  # 7 val images: odd on purpose
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(torchrun + ["-m", "tlearn", "train", "--data", str(data), "--model", TINY_MODEL,
                                        "--weights", "none", "--image-size", "32", "--batch-size", "4",
                                        "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "2",
                                        "--device", "cpu", "--workers", "0", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
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
