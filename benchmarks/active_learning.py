"""Label efficiency of `tlearn suggest`'s choice, and the gain of pseudo-labels (self-training).

    python benchmarks/active_learning.py [--set B] [--seeds 5] [--budgets 10,20,50,100,200]

A simulation on CIFAR-10 training JPEGs (../shared/data): a pool of 5,000 images whose labels are
hidden and revealed only for the images a strategy picks, and an evaluation split of 1,000 other
images. Two disjoint sets are drawn (stratified, seeded): A to choose the rule on, B to report
(the default). Features: the bundled EfficientNet-Lite0, through tlearn's feature cache, at 224 px
(its own size: what `tlearn suggest` uses unless told `--image-size`; the issue's reference and
this benchmark's earlier tables used 96 px, `--image-size 96`).
The probe is the same for every strategy (features/few_labels.py: L2-normalised, standardised
on the pool, logistic regression C=1).

Strategies, each at every budget and seed:
  random        a seeded random order of the pool, its first B images
  cold          one TypiClust round of B images from no labels
  cover         tlearn's rounds: ProbCover from the labels so far, TypiClust once half the pool is
                covered (label/_choice.py's cover_picks), budget to budget (10, 20, 50, ...)
  rounds        the former rule: TypiClust from the labels so far, budget to budget
  margin        the first round as `rounds`, then the smallest calibrated top-2 margins
  mixed         the first round as `rounds`, then half TypiClust, half smallest margin
  oracle        not a rule, a reference that sees every pool label: B / 10 images a class (at least 1), each the
                most typical of one of B / 10 k-means clusters of its class
--pool-share S: each seed also hides a random (1 - S) of the pool from every strategy, so that a rule
without randomness (ProbCover) is measured over several pools, not one draw.
Pseudo-labels: the probe self-trained (the most confident share of each predicted class, growing
round by round, weighted; features/few_labels.py's defaults, or the --pseudo-* flags) on the labels
`cover` (tlearn's rule) chose at 20, 50 and 100, and on 10 random labels per class.

Prints one JSON line: accuracy (mean and std over seeds) per strategy and budget, the labels each
strategy needs for random's accuracy at the largest budget, and the pseudo-label gains.
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
from common import ROOT, sample_cifar  # noqa: E402
from tlearn.features import FeatureScaler, cross_validate, fit_probe, self_train  # noqa: E402
from tlearn.features.few_labels import (  # noqa: E402
    SELF_TRAINING_ROUNDS,
    SELF_TRAINING_SHARE,
    SELF_TRAINING_WEIGHT,
)
from tlearn.label import Backbone, pool_features, scan_pool  # noqa: E402
from tlearn.label._choice import cluster, cover_picks, margin_picks, typical_picks, typicality  # noqa: E402

DATA = ROOT / "data" / "active-learning"
STRATEGIES = ("random", "cold", "cover", "rounds", "margin", "mixed")  # and "oracle", on request


def build_sets() -> None:
    """raw: 1,000 train and 200 val images a class; A and B alternate through each class's sorted files."""
    if (DATA / "A").is_dir() and (DATA / "B").is_dir():
        return
    raw = sample_cifar(DATA / "raw", 10000, 2000, seed=0)
    for source, part in (("train", "pool"), ("val", "eval")):
        for folder in sorted((raw / source).iterdir()):
            for index, image in enumerate(sorted(folder.iterdir())):
                target = DATA / "AB"[index % 2] / part / folder.name / image.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image, target)


def load_set(name: str, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scaled pool and eval features and their class indices (the scaler from the pool: no labels needed)."""
    arrays = []
    for part in ("pool", "eval"):
        pool = scan_pool(DATA / name / part)
        features = pool_features(pool, Backbone(image_size=image_size, device="cpu"))
        classes = sorted({path.split("/")[0] for path in pool.paths})
        arrays.append((features, np.array([classes.index(path.split("/")[0]) for path in pool.paths])))
    scaler = FeatureScaler.of(arrays[0][0])
    return scaler(arrays[0][0]), arrays[0][1], scaler(arrays[1][0]), arrays[1][1]


def accuracy(probe, features: np.ndarray, labels: np.ndarray) -> float:
    return float((probe.probabilities(features).argmax(axis=1) == labels).mean())


def choose(strategy: str, features: np.ndarray, truth: np.ndarray, budgets: list[int], seed: int,
           num_classes: int) -> dict[int, np.ndarray]:
    """The labelled mask at each budget, revealing truth only for what the strategy picked."""
    labelled, chosen = np.zeros(len(features), dtype=bool), {}
    order = np.random.default_rng(seed).permutation(len(features))
    for budget in budgets:
        count = budget - int(labelled.sum())
        if strategy == "random":
            picks = order[int(labelled.sum()):budget]
        elif strategy == "cold":
            labelled[:] = False
            picks = indices(typical_picks(features, labelled, budget, seed))
        elif strategy == "cover":
            picks = indices(cover_picks(features, labelled, count, seed))
        elif strategy == "oracle":
            labelled[:] = False
            picks = oracle_picks(features, truth, max(1, budget // num_classes), seed)
        elif strategy == "rounds" or not labelled.any():
            picks = indices(typical_picks(features, labelled, count, seed))
        else:
            probabilities = _calibrated(features, truth, labelled, num_classes)
            if strategy == "margin":
                picks = margin_picks(probabilities, labelled, count)
            else:
                uncertain = margin_picks(probabilities, labelled, count // 2)
                after = labelled.copy()
                after[uncertain] = True
                picks = uncertain + indices(typical_picks(features, after, count - len(uncertain), seed))
        labelled[np.asarray(picks, dtype=np.int64)] = True
        chosen[budget] = labelled.copy()
    return chosen


def oracle_picks(features: np.ndarray, truth: np.ndarray, per_class: int, seed: int) -> list[int]:
    """Knowing every label: per class, the most typical image of each of `per_class` k-means clusters."""
    picks = []
    for name in np.unique(truth):
        members = np.flatnonzero(truth == name)
        assignment = cluster(features[members], per_class, seed)
        for group in (members[assignment == index] for index in np.unique(assignment)):
            picks.append(int(group[np.argmax(typicality(features[group]))]))
    return picks


def indices(picks: list[tuple[int, float, str]]) -> list[int]:
    return [index for index, _, _ in picks]


def _calibrated(features, truth, labelled, num_classes) -> np.ndarray:
    """The probe's pool probabilities at the temperature its cross-validation gives (T = 1 below 50)."""
    probe = fit_probe(features[labelled], truth[labelled], num_classes)
    validation = cross_validate(features[labelled], truth[labelled], num_classes)
    return probe.probabilities(features, validation.temperature if validation else 1.0)


def labels_needed(curve: dict[int, float], target: float) -> float | None:
    """Labels at which a curve reaches `target`, interpolated linearly between budgets."""
    points = sorted(curve.items())
    for (low, low_accuracy), (high, high_accuracy) in zip(points, points[1:]):
        if low_accuracy >= target:
            return float(low)
        if high_accuracy >= target:
            return low + (high - low) * (target - low_accuracy) / (high_accuracy - low_accuracy)
    return float(points[-1][0]) if points[-1][1] >= target else None


def pseudo_gain(features, truth, mask, test_features, test_truth, num_classes, settings: dict) -> dict:
    """Accuracy with and without self-training (`settings`: self_train's share, rounds, weight, grow),
    and how accurate the pseudo-labels were."""
    plain = fit_probe(features[mask], truth[mask], num_classes)
    unlabelled = np.flatnonzero(~mask)
    trained = self_train(features[mask], truth[mask], features[unlabelled], num_classes, **settings)
    correct = truth[unlabelled][trained.pseudo_indices] == trained.pseudo_labels
    return {"plain": accuracy(plain, test_features, test_truth),
            "self_trained": accuracy(trained.probe, test_features, test_truth),
            "pseudo": len(trained.pseudo_indices), "pseudo_accuracy": float(correct.mean()) if len(correct) else 0.0}


def per_class_mask(truth: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng, mask = np.random.default_rng(seed), np.zeros(len(truth), dtype=bool)
    for name in np.unique(truth):
        mask[rng.choice(np.flatnonzero(truth == name), per_class, replace=False)] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", choices=("A", "B"), default="B", help="A: choose the rule on it; B: report")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", default="10,20,50,100,200")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pool-share", type=float, default=1.0,
                        help="each seed keeps this random share of the pool (default: all of it)")
    parser.add_argument("--pseudo-share", type=float, default=SELF_TRAINING_SHARE)
    parser.add_argument("--pseudo-weight", type=float, default=SELF_TRAINING_WEIGHT)
    parser.add_argument("--pseudo-rounds", type=int, default=SELF_TRAINING_ROUNDS)
    parser.add_argument("--pseudo-flat", action="store_true",
                        help="the same share every round (default: growing to --pseudo-share)")
    args = parser.parse_args()
    settings = {"share": args.pseudo_share, "rounds": args.pseudo_rounds, "weight": args.pseudo_weight,
                "grow": not args.pseudo_flat}
    budgets = [int(budget) for budget in args.budgets.split(",")]
    strategies = args.strategies.split(",")
    start = time.perf_counter()
    build_sets()
    pool, truth, test, test_truth = load_set(args.set, args.image_size)
    num_classes = int(truth.max()) + 1
    results = {name: {budget: [] for budget in budgets} for name in strategies}
    gains = {key: [] for key in ("cover@20", "cover@50", "cover@100", "random-10-per-class")}
    whole_pool, whole_truth = pool, truth
    for seed in range(args.seeds):
        if args.pool_share < 1:
            keep = np.sort(np.random.default_rng(100 + seed).choice(
                len(whole_pool), int(round(args.pool_share * len(whole_pool))), replace=False))
            pool, truth = whole_pool[keep], whole_truth[keep]
        for name in strategies:
            for budget, mask in choose(name, pool, truth, budgets, seed, num_classes).items():
                probe = fit_probe(pool[mask], truth[mask], num_classes)
                results[name][budget].append(accuracy(probe, test, test_truth))
                if name == "cover" and f"cover@{budget}" in gains:
                    gains[f"cover@{budget}"].append(
                        pseudo_gain(pool, truth, mask, test, test_truth, num_classes, settings))
        gains["random-10-per-class"].append(pseudo_gain(pool, truth, per_class_mask(truth, 10, seed), test, test_truth,
                                                        num_classes, settings))
    means = {name: {budget: float(np.mean(values)) for budget, values in curve.items()}
             for name, curve in results.items()}
    full = accuracy(fit_probe(whole_pool, whole_truth, num_classes), test, test_truth)
    target = means["random"][budgets[-1]] if "random" in means else None
    print(json.dumps({
        "benchmark": "active_learning", "set": args.set, "seeds": args.seeds, "image_size": args.image_size,
        "pool": len(whole_pool), "pool_share": args.pool_share, "eval": len(test), "full_pool_accuracy": round(full, 4),
        "accuracy": {name: {budget: round(value, 4) for budget, value in curve.items()}
                     for name, curve in means.items()},
        "std": {name: {budget: round(float(np.std(values)), 4) for budget, values in curve.items()}
                for name, curve in results.items()},
        "labels_for_random_at_largest_budget": {name: labels_needed(curve, target) for name, curve in means.items()}
        if target is not None else None,
        "pseudo_settings": settings,
        "pseudo_labels": {key: {field: round(float(np.mean([run[field] for run in runs])), 4) for field in runs[0]}
                          for key, runs in gains.items() if runs},
        "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
