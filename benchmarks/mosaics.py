"""Multi-label probe on CIFAR-10 mosaics, cross-checked with scikit-learn's one-vs-rest logistic regression.

    python benchmarks/mosaics.py [--train 2000] [--val 1000] [--seed 0] [--image-size 128]

Builds data/mosaics/seed-S (git-ignored) from ../shared/data/cifar10-jpg-train.tar.gz: each
mosaic is 64 x 64 px, a 2 x 2 grid of 32 px cells; 1 to 4 tiles (uniformly), each a distinct
random CIFAR-10 training image placed in a random free cell; empty cells are mid grey (128, the
zero of Lite0's normalisation, mean = std = 0.5). Its labels are the classes of its tiles
(a class twice counts once). PNG files (lossless) and labels.csv (file, labels space-separated,
split train|val).

Then runs `tlearn train --data ROOT --labels labels.csv --label-delim ' ' --strategy linear-probe
--image-size 128` (Lite0, bundled weights; the L-BFGS one-vs-rest head, L2 chosen on val mAP) and
reports val mAP and micro-F1 at 0.5 and at the stored thresholds; and fits scikit-learn's
`OneVsRestClassifier(LogisticRegression(C=1))` on the same cached features (the run's own cache
entries) with the same figures. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARBALL

CELL, GREY = 32, 128


def build_mosaics(out: Path, train: int, val: int, seed: int) -> Path:
    done = out / ".complete"
    if done.is_file():
        return out
    with tarfile.open(TARBALL) as archive:  # names only
        names = sorted(m.name for m in archive if m.isfile() and m.name.startswith("train/")
                       and m.name.endswith(".jpg"))
    rng = random.Random(seed)
    counts = [rng.randint(1, 4) for _ in range(train + val)]
    chosen = rng.sample(names, sum(counts))
    tiles = {}
    wanted = set(chosen)
    with tarfile.open(TARBALL, mode="r|gz") as archive:  # one streaming pass
        for member in archive:
            if member.name in wanted:
                tiles[member.name] = Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB")
    (out / "img").mkdir(parents=True, exist_ok=True)
    rows, start = [], 0
    for index, count in enumerate(counts):
        mosaic = Image.new("RGB", (2 * CELL, 2 * CELL), (GREY, GREY, GREY))
        cells = rng.sample(range(4), count)
        labels = set()
        for cell, name in zip(cells, chosen[start:start + count]):
            mosaic.paste(tiles[name].resize((CELL, CELL)), ((cell % 2) * CELL, (cell // 2) * CELL))
            labels.add(Path(name).parent.name)
        start += count
        mosaic.save(out / "img" / f"{index:05d}.png")
        rows.append((f"img/{index:05d}.png", " ".join(sorted(labels)), "train" if index < train else "val"))
    with (out / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "labels", "split"])
        writer.writerows(rows)
    done.write_text(json.dumps({"seed": seed, "train": train, "val": val, "tiles": sum(counts)}))
    return out


def features_of(run: Path, cache: Path):
    """The run's train/val features (its own cache entries) and multi-hot labels, as numpy."""
    from tlearn.data.sources import load_data
    from tlearn.features.extractor import FeatureExtractor
    from tlearn.run_folder import checkpoint
    from tlearn.run_folder.records import read_config
    from tlearn.runtime import setup_runtime

    config = read_config(run)
    model = checkpoint.load_model(run)
    data = load_data(config.data, config.train.seed)
    extractor = FeatureExtractor(setup_runtime("cpu"), batch_size=64, cache_dir=cache)
    return {split: (extractor.cached(model, samples).float().numpy(), np.asarray(samples.labels))
            for split, samples in (("train", data.train), ("val", data.val))}, model.info.thresholds


def figures(probs: np.ndarray, targets: np.ndarray, thresholds) -> dict:
    from sklearn.metrics import average_precision_score, f1_score

    from tlearn.metrics.multilabel import choose_thresholds, predict_labels

    thresholds = choose_thresholds(probs, targets) if thresholds is None else thresholds
    return {"map_sklearn": round(float(average_precision_score(targets, probs, average="macro")), 4),
            "f1_micro_at_0.5": round(float(f1_score(targets, probs >= 0.5, average="micro")), 4),
            "f1_micro_at_thresholds": round(float(f1_score(targets, predict_labels(probs, thresholds),
                                                           average="micro")), 4),
            "f1_macro_at_thresholds": round(float(f1_score(targets, predict_labels(probs, thresholds),
                                                           average="macro")), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    began = time.perf_counter()
    root = build_mosaics(ROOT / "data" / "mosaics" / f"seed-{args.seed}", args.train, args.val, args.seed)
    built = time.perf_counter()
    run, cache = root.with_name(root.name + "-run"), ROOT / "data" / "mosaics" / "cache"
    command = [sys.executable, "-m", "tlearn", "train", "--data", str(root), "--labels",
               str(root / "labels.csv"), "--label-delim", " ", "--strategy", "linear-probe", "--model",
               "efficientnet_lite0", "--image-size", str(args.image_size), "--out", str(run), "--cache-dir",
               str(cache), "--no-report"]
    if run.exists():
        import shutil

        shutil.rmtree(run)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"tlearn train failed:\n{result.stderr[-3000:]}")
    trained = time.perf_counter()
    summary = json.loads((run / "summary.json").read_text())
    features, thresholds = features_of(run, cache)
    (train_x, train_y), (val_x, val_y) = features["train"], features["val"]
    from tlearn.run_folder import checkpoint

    weights = checkpoint.read_tensors(run / checkpoint.MODEL_FILE)
    head_weight, head_bias = weights["head.weight"].double().numpy(), weights["head.bias"].double().numpy()
    logits = val_x.astype(np.float64) @ head_weight.T + head_bias
    tlearn_probs = 1 / (1 + np.exp(-logits))
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    sklearn_model = OneVsRestClassifier(LogisticRegression(C=1.0, max_iter=3000)).fit(train_x, train_y)
    sklearn_probs = sklearn_model.predict_proba(val_x)
    print(json.dumps({
        "data": {"train": args.train, "val": args.val, "seed": args.seed, "image_size": args.image_size,
                 "labels_per_image_val": round(float(val_y.sum(1).mean()), 3), "empty_cells": "grey 128"},
        "tlearn": {"val_map": round(summary["val_map"], 4), "val_f1_micro": round(summary["val_f1_micro"], 4),
                   "val_f1_macro": round(summary["val_f1_macro"], 4), **figures(tlearn_probs, val_y, thresholds),
                   "l2_sweep": [line.strip() for line in result.stdout.splitlines() if "L-BFGS l2=" in line]},
        "sklearn_ovr_C1": figures(sklearn_probs, val_y, None),
        "seconds": {"build": round(built - began, 1), "train": round(trained - built, 1),
                    "sklearn": round(time.perf_counter() - trained, 1)},
    }, indent=2))


if __name__ == "__main__":
    main()
