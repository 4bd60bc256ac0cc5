"""Calibration on CIFAR-10: ECE before and after temperature scaling on a held-out split, and the
accuracy/coverage trade-off of `predict --coverage C`.

    python benchmarks/calibration.py [--strategy linear-probe] [--epochs 1] [--head-epochs 1]
        [--train-images 2000] [--val-images 1000] [--test-images 1000] [--image-size 96]

Builds data/calibration-cifar/{train,val,test}/<class>/*.jpg from the shared CIFAR-10 tarball
(stratified, seeded; reused when present), trains the bundled EfficientNet-Lite0 (the temperature
and the coverage table are fitted on val at the end of training), then on the held-out test split:
ECE with and without the temperature (15 bins), and for each coverage C the threshold picked on
val, the fraction of test images answered and the top-1 accuracy on them. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tlearn  # noqa: E402
from common import ROOT, sample_cifar  # noqa: E402
from tlearn.api import evaluation  # noqa: E402
from tlearn.metrics.calibration import answered  # noqa: E402

COVERAGES = (1.0, 0.95, 0.9, 0.8)


def build_data(out: Path, train: int, val: int, test: int) -> Path:
    """train/ and val/ from `sample_cifar`, then every class's val images split into val/ and test/."""
    if (out / "test").is_dir():
        return out
    sample_cifar(out, train, val + test)
    for folder in sorted((out / "val").iterdir()):
        files = sorted(folder.iterdir())
        moved = files[len(files) * val // (val + test):]
        (out / "test" / folder.name).mkdir(parents=True, exist_ok=True)
        for path in moved:
            shutil.move(str(path), out / "test" / folder.name / path.name)
    return out


def trade_off(run: Path, probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Per coverage: the threshold picked on val and what it does on these (held-out) images."""
    trained = tlearn.load(run)
    confidences, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    rows = []
    for coverage in COVERAGES:
        threshold = trained.min_confidence(coverage=coverage) or 0.0
        kept = answered(confidences, threshold)
        rows.append({"coverage_on_val": coverage, "min_confidence": round(threshold, 4),
                     "answered_on_test": round(float(kept.mean()), 4),
                     "accuracy_on_answered": round(float(correct[kept].mean()), 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="linear-probe")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--head-epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    base = ROOT / "data" / "calibration-cifar"
    data = build_data(base / f"{args.train_images}-{args.val_images}-{args.test_images}", args.train_images,
                      args.val_images, args.test_images)
    run = base / "runs" / f"{args.strategy}-{args.image_size}px-{args.epochs}e"
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    summary, _ = tlearn.train(tlearn.RunConfig(
        data=tlearn.DataConfig(source=str(data), image_size=args.image_size, batch_size=64),
        model=tlearn.ModelConfig(name="efficientnet_lite0"),
        train=tlearn.TrainConfig(strategy=args.strategy, epochs=args.epochs, head_epochs=args.head_epochs,
                                 cache_dir=str(base / "cache"), report=False)), run)
    train_seconds = time.perf_counter() - start
    held_out = evaluation(run, data, split="test")
    probs, labels = held_out.probs.numpy(), np.asarray(held_out.samples.labels)
    print(json.dumps({
        "strategy": args.strategy, "epochs": args.epochs, "image_size": args.image_size,
        "train_images": args.train_images, "val_images": args.val_images, "test_images": len(labels),
        "temperature": summary["temperature"], "val_top1": summary["val_top1"],
        "val_ece_uncalibrated": summary["val_ece_uncalibrated"], "val_ece": summary["val_ece"],
        "test_top1": held_out.result["top1"], "test_ece_uncalibrated": held_out.result["ece_uncalibrated"],
        "test_ece": held_out.result["ece"], "trade_off": trade_off(run, probs, labels),
        "train_seconds": round(train_seconds, 1)}))


if __name__ == "__main__":
    main()
