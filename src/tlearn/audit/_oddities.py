"""Class balance per split, and images that stand out: tiny, extreme shapes, the odd one out in
colour (a grayscale image among colour ones, or the reverse), files the loaders could not read."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._hashing import ImageFacts

TINY_SIDE = 32  # a shorter side below this is tiny
EXTREME_ASPECT = 4.0  # longer side over shorter side above this is extreme


@dataclass(frozen=True)
class OddImage:
    path: str
    reason: str
    index: int | None = None  # None: a file no loader could read (no sample)


def class_balance(labels: list[int], split_names: list[str], class_names: list[str]) -> dict[str, list[int]]:
    """{split: count per class}, splits in order of first appearance."""
    labels_array, splits = np.asarray(labels, dtype=np.int64), np.asarray(split_names)
    return {split: np.bincount(labels_array[splits == split], minlength=len(class_names)).tolist()
            for split in dict.fromkeys(split_names)}


def imbalance_ratio(counts: list[int]) -> float:
    """Largest class over smallest (inf when a class is empty)."""
    return float(max(counts)) / min(counts) if min(counts) > 0 else float("inf")


def odd_images(facts: ImageFacts, paths: list[str], skipped: list[tuple[str, str]]) -> list[OddImage]:
    """Each odd image with why; an image may be odd for several reasons (one row each)."""
    found = []
    shorter = np.minimum(facts.widths, facts.heights)
    aspect = np.maximum(facts.widths, facts.heights) / np.maximum(shorter, 1)
    for index in np.flatnonzero(shorter < TINY_SIDE):
        found.append(OddImage(paths[index], f"tiny ({facts.widths[index]}x{facts.heights[index]} px)", int(index)))
    for index in np.flatnonzero(aspect > EXTREME_ASPECT):
        found.append(OddImage(paths[index], f"extreme aspect ratio {aspect[index]:.1f}:1 "
                                            f"({facts.widths[index]}x{facts.heights[index]} px)", int(index)))
    gray_share = float(facts.grayscale.mean()) if len(facts.grayscale) else 0.0
    minority, reason = (facts.grayscale, "grayscale among colour images") if gray_share < 0.5 else \
        (~facts.grayscale, "colour among grayscale images")
    for index in np.flatnonzero(minority):
        found.append(OddImage(paths[index], reason, int(index)))
    found += [OddImage(path, reason) for path, reason in skipped]
    return found
