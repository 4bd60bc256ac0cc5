"""Imbalanced classes: every `--balance` mode of the linear probe on CIFAR-10-LT, cross-checked with scikit-learn.

    python benchmarks/imbalance.py [--seeds 0 1] [--modes none reweight resample logit-adjust] [--image-size 224]
                                   [--solvers lbfgs sgd] [--sgd-epochs 10]

For each seed, builds CIFAR-10-LT from ../shared/data/cifar10-jpg-train.tar.gz into
data/imbalance/seed-S (git-ignored): imbalance ratio 100, n_i = round(500 * 0.01 ** (i / 9))
training images of class i (500 down to 5, 1,242 in all; which class gets which count is a
seeded permutation, as are the images), a balanced validation set of 100 per class, and a
long-tailed test set drawn like the training set (round(200 * 0.01 ** (i / 9)), 200 down to 2, 496 images):
the first shows balanced accuracy (on it top-1 = balanced accuracy), the second what each
mode costs in top-1 when the test data are as imbalanced as the training data.

Then runs `tlearn train --strategy linear-probe --model efficientnet_lite0 --image-size 224
--balance MODE` for each mode (the features are cached, so modes after the first are
cheap; `--solvers sgd` runs `--head-solver sgd --epochs 10` instead, where resample really
samples) and fits scikit-learn's LogisticRegression on the same cached features (C = 1:
unweighted, class_weight="balanced", and unweighted with the logits shifted by -log prior).
Prints one JSON line per seed and mode, and a JSON summary (mean and spread over seeds).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARBALL

MODES = ("none", "reweight", "resample", "logit-adjust")
NUM_CLASSES, MAX_TRAIN, MAX_TEST, VAL_PER_CLASS, RATIO = 10, 500, 200, 100, 100


def long_tail(largest: int) -> list[int]:
    return [round(largest * (1 / RATIO) ** (i / (NUM_CLASSES - 1))) for i in range(NUM_CLASSES)]


def build_cifar_lt(out: Path, seed: int) -> Path:
    """out/train, out/val (a folder tlearn trains on) and out-test (long-tailed test set)."""
    done = out / ".complete"
    if done.is_file():
        return out
    with tarfile.open(TARBALL) as archive:  # names only: one pass through the gzip stream
        names = [m.name for m in archive if m.isfile() and m.name.startswith("train/") and m.name.endswith(".jpg")]
    by_class = defaultdict(list)
    for name in sorted(names):
        by_class[Path(name).parent.name].append(name)
    classes = sorted(by_class)
    rng = random.Random(seed)
    order = classes[:]
    rng.shuffle(order)  # which class is the head and which the tail
    train_counts, test_counts = dict(zip(order, long_tail(MAX_TRAIN))), dict(zip(order, long_tail(MAX_TEST)))
    target = {}
    for name in classes:
        items = by_class[name][:]
        rng.shuffle(items)
        n_train, n_test = train_counts[name], test_counts[name]
        for folder, chosen in ((out / "train", items[:n_train]),
                               (out / "val", items[n_train:n_train + VAL_PER_CLASS]),
                               (out.with_name(out.name + "-test"), items[n_train + VAL_PER_CLASS:][:n_test])):
            target.update({item: folder / name / Path(item).name for item in chosen})
    with tarfile.open(TARBALL, mode="r|gz") as archive:  # a second pass, streaming: no seeks
        for member in archive:
            if member.name in target:
                target[member.name].parent.mkdir(parents=True, exist_ok=True)
                target[member.name].write_bytes(archive.extractfile(member).read())
    done.write_text(json.dumps({"seed": seed, "train_counts": train_counts, "test_counts": test_counts}))
    return out


def train_mode(data: Path, mode: str, run: Path, cache: Path, image_size: int, solver: str,
               sgd_epochs: int) -> tuple[dict, float]:
    command = [sys.executable, "-m", "tlearn", "train", "-q", "--data", str(data), "--strategy", "linear-probe",
               "--model", "efficientnet_lite0", "--image-size", str(image_size), "--balance", mode,
               "--head-solver", solver, "--epochs", str(sgd_epochs), "--out", str(run), "--cache-dir", str(cache),
               "--no-report"]
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"tlearn train failed:\n{result.stderr[-3000:]}")
    return json.loads((run / "summary.json").read_text()), time.perf_counter() - began


def cached_features(run: Path, test_folder: Path, cache: Path):
    """The run's own train/val features (cache hits) and the long-tailed test set's, as numpy."""
    from tlearn.config import DataConfig
    from tlearn.data.sources import load_data, resolve_split
    from tlearn.features.extractor import FeatureExtractor
    from tlearn.run_folder import checkpoint
    from tlearn.run_folder.records import read_config
    from tlearn.runtime import setup_runtime

    config = read_config(run)
    model = checkpoint.load_model(run)
    data = load_data(config.data, config.train.seed)
    test = resolve_split(DataConfig(source=str(test_folder)), "all").samples
    assert resolve_split(DataConfig(source=str(test_folder)), "all").class_names == data.class_names
    extractor = FeatureExtractor(setup_runtime("cpu"), batch_size=64, cache_dir=cache)
    out = {}
    for split, samples in (("train", data.train), ("val", data.val), ("test", test)):
        out[split] = (extractor.cached(model, samples).float().numpy(), np.asarray(samples.labels))
    return out


def scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score, f1_score

    predicted = logits.argmax(1)
    return {"top1": round(float((predicted == labels).mean()), 4),
            "balanced_acc": round(float(balanced_accuracy_score(labels, predicted)), 4),
            "f1_macro": round(float(f1_score(labels, predicted, average="macro")), 4)}


def head_logits(run: Path, features: np.ndarray) -> np.ndarray:
    from tlearn.run_folder import checkpoint

    weights = checkpoint.read_tensors(run / checkpoint.MODEL_FILE)
    return features @ weights["head.weight"].double().numpy().T + weights["head.bias"].double().numpy()


def sklearn_rows(features: dict) -> dict:
    from sklearn.linear_model import LogisticRegression

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = features["train"], features["val"], features["test"]
    log_prior = np.log(np.bincount(train_y, minlength=NUM_CLASSES) / len(train_y))
    rows = {}
    for name, weight, shift in (("unweighted", None, 0.0), ("balanced", "balanced", 0.0),
                                ("logit-adjusted", None, -log_prior)):
        model = LogisticRegression(C=1.0, max_iter=3000, class_weight=weight).fit(train_x, train_y)
        rows[name] = {"val": scores(model.decision_function(val_x) + shift, val_y),
                      "test_lt": scores(model.decision_function(test_x) + shift, test_y)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--solvers", nargs="+", default=["lbfgs"], choices=("lbfgs", "sgd"),
                        help="head solvers: lbfgs (the default probe) and/or sgd (mini-batch AdamW: the sampler)")
    parser.add_argument("--sgd-epochs", type=int, default=10)
    parser.add_argument("--no-sklearn", dest="sklearn", action="store_false", help="skip the cross-check")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "imbalance")
    args = parser.parse_args()
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} not found: the benchmarks read the project's shared data folder")
    cache, results = args.out / "cache", defaultdict(list)
    for seed in args.seeds:
        data = build_cifar_lt(args.out / f"seed-{seed}", seed)
        test_folder = data.with_name(data.name + "-test")
        features = None
        for solver, mode in ((solver, mode) for solver in args.solvers for mode in args.modes):
            run = args.out / "runs" / f"seed-{seed}" / f"{mode}-{solver}"
            summary, seconds = train_mode(data, mode, run, cache, args.image_size, solver, args.sgd_epochs)
            features = features or cached_features(run, test_folder, cache)
            name = mode if solver == "lbfgs" else f"{mode} (sgd head)"
            row = {"seed": seed, "mode": name, "seconds": round(seconds, 1), "val_top1": summary["val_top1"],
                   "val_balanced_acc": summary["val_balanced_acc"], "val_f1_macro": summary["val_f1_macro"],
                   "test_lt": scores(head_logits(run, features["test"][0]), features["test"][1])}
            results[name].append(row)
            print(json.dumps(row), flush=True)
        for name, row in (sklearn_rows(features) if args.sklearn else {}).items():
            results[f"sklearn {name}"].append({"seed": seed, "val_balanced_acc": row["val"]["balanced_acc"],
                                               "test_lt": row["test_lt"]})
            print(json.dumps({"seed": seed, "sklearn": name, **row}), flush=True)
    print(json.dumps({name: _spread(rows) for name, rows in results.items()}))


def _spread(rows: list[dict]) -> dict:
    balanced = [r["val_balanced_acc"] for r in rows]
    test_top1 = [r["test_lt"]["top1"] for r in rows]
    return {"val_balanced_acc_mean": round(statistics.mean(balanced), 4), "min": min(balanced), "max": max(balanced),
            "test_lt_top1_mean": round(statistics.mean(test_top1), 4)}


if __name__ == "__main__":
    main()
