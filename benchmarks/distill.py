"""Distillation: a Lite0 student distilled from a fine-tuned Lite2 teacher vs the same Lite0 trained
directly with the same budget, scored on a held-out split neither run saw.

    python benchmarks/distill.py [--train 200] [--val 100] [--heldout 300] [--epochs 1] [--head-epochs 5]

A seeded, stratified CIFAR-10 sample (benchmarks/common.py) is split three ways: train/ and val/
(what the runs train and pick their best epoch on) and heldout/ (scored once at the end with
`tlearn eval`). The three runs (all `two-stage` with the head trained by SGD on cached features, as
distill's must be, and the same seed, epochs and batch size):

  teacher    tlearn train --model efficientnet_lite2 (260 px)
  direct     tlearn train --model efficientnet_lite0 (224 px)
  distilled  tlearn distill TEACHER --student efficientnet_lite0 (224 px; KL at T = 4, weights 0.5/0.5)

Per-image latency (batch 1, this machine) comes from the distilled run's summary, which measures
both models the same way. Prints one JSON line; the runs stay under data/bench-distill/ (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, sample_cifar

WORK = ROOT / "data" / "bench-distill"


def tlearn(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TLEARN_CACHE": str(work / "cache")}
    done = subprocess.run([sys.executable, "-m", "tlearn", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"tlearn {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    return done


def make_splits(work: Path, train: int, val: int, heldout: int, seed: int) -> tuple[Path, Path]:
    """data/ (train/, val/) and heldout/ from one sample: val's first images per class stay val."""
    data, held = work / "data", work / "heldout"
    if data.is_dir() and held.is_dir():
        return data, held
    sample = sample_cifar(work / "sample", train, val + heldout, seed)
    (data / "train").parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(sample / "train"), str(data / "train"))
    per_class = val // 10
    for folder in sorted((sample / "val").iterdir()):
        files = sorted(folder.iterdir())
        for index, path in enumerate(files):
            target = (data / "val" if index < per_class else held) / folder.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
    shutil.rmtree(sample)
    return data, held


def heldout_top1(work: Path, run: Path, heldout: Path) -> float:
    return json.loads(tlearn(work, "eval", str(run), "--data", str(heldout), "--json").stdout)["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=WORK, help="where the sample, caches and runs go")
    args = parser.parse_args()
    work = args.work
    data, held = make_splits(work, args.train, args.val, args.heldout, args.seed)
    budget = ["--data", str(data), "--strategy", "two-stage", "--epochs", str(args.epochs), "--head-epochs",
              str(args.head_epochs), "--head-solver", "sgd", "--batch-size", str(args.batch_size),
              "--seed", str(args.seed), "--no-report", "--overwrite"]
    runs = {name: work / name for name in ("teacher", "direct", "distilled")}
    seconds = {}
    for name, command in (("teacher", ["train", "--model", "efficientnet_lite2"]),
                          ("direct", ["train", "--model", "efficientnet_lite0"]),
                          ("distilled", ["distill", str(runs["teacher"]), "--student", "efficientnet_lite0"])):
        began = time.perf_counter()
        tlearn(work, *command, *budget, "--out", str(runs[name]))
        seconds[name] = round(time.perf_counter() - began, 1)
    figures = json.loads((runs["distilled"] / "summary.json").read_text())["distillation"]
    top1 = {name: round(heldout_top1(work, run, held), 4) for name, run in runs.items()}
    print(json.dumps({
        "train_images": args.train, "val_images": args.val, "heldout_images": args.heldout,
        "epochs": args.epochs, "head_epochs": args.head_epochs, "heldout_top1": top1,
        "distilled_minus_direct_points": round(100 * (top1["distilled"] - top1["direct"]), 2),
        "teacher_ms_per_image": figures["teacher_latency_ms"], "student_ms_per_image": figures["student_latency_ms"],
        "student_speedup": figures["speedup"], "latency_device": figures["latency_device"],
        "wall_seconds": seconds, "load_average": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
