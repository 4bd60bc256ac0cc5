"""Exact and near duplicates, and which of them cross the train/val boundary (leakage).

Exact: the same decoded pixels (hashing.content_hash), whatever the file names and formats.
Near: re-encoded, resized or slightly cropped copies. Neither signal alone is enough on
small images: measured on 32 px CIFAR copies (README, "Auditing a data set"), backbone
cosine similarity of planted copies overlapped that of unrelated look-alikes, while the
perceptual hash (with its crop variants, hashing.py) kept them apart for most copies; a copy
that moved more pHash bits (a crop) mostly still has a high cosine. So a pair is near when its
pHash distance is small, or when its cosine is high and its pHash distance moderately small.
Candidates come from all pHash distances computed as matrix products in row chunks, never a
Python loop over pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._hashing import signs

# Chosen on one planted CIFAR sample (seed 1) and checked on another (seed 2): README.
NEAR_HAMMING = 8  # at most this many of 63 pHash bits differ: a copy on the hash alone
COSINE_HIGH = 0.85  # ... or features this similar
MODERATE_HAMMING = 12  # ... and at most this many bits differ
MIN_COSINE = 0.5  # even a pHash match needs this: flat images (a small object on sky) collide in pHash;
# the lowest planted copy on seed 1 had 0.65 (a 16 px shrink enlarged back)
MAX_CANDIDATES_PER_IMAGE = 20  # nearest by pHash: bounds the work when many images look alike (blank frames)
CHUNK_CELLS = 1 << 25  # distances held at once (float32: 128 MB), whatever the data set's size


@dataclass(frozen=True)
class DuplicatePair:
    first: int  # sample indices, first < second except for exact groups (the group's first member)
    second: int
    similarity: float  # cosine of the backbone features (1.0 for exact)
    kind: str  # exact | near
    phash_distance: int


def exact_groups(content_hashes: list[str]) -> np.ndarray:
    """Each sample's group id: samples with the same pixels share one (the first member's index)."""
    first_of: dict[str, int] = {}
    return np.array([first_of.setdefault(value, index) for index, value in enumerate(content_hashes)],
                    dtype=np.int64)


def find_duplicates(content_hashes: list[str], phash_bits: np.ndarray, crop_bits: np.ndarray,
                    features: np.ndarray) -> list[DuplicatePair]:
    """Exact pairs (each copy with its group's first member), then near pairs between groups.

    `features` are L2-normalised rows, so a dot product is the cosine similarity."""
    groups = exact_groups(content_hashes)
    copies = np.flatnonzero(groups != np.arange(len(groups)))
    pairs = [DuplicatePair(int(groups[i]), i, 1.0, "exact", 0) for i in copies]
    for (first, second), distance in sorted(_candidates(phash_bits, crop_bits, groups).items()):
        cosine = float(features[first] @ features[second])
        if is_near(distance, cosine):
            pairs.append(DuplicatePair(first, second, round(cosine, 4), "near", distance))
    return pairs


def is_near(phash_distance: int, cosine: float) -> bool:
    """The combined rule (module docstring)."""
    return (phash_distance <= NEAR_HAMMING and cosine >= MIN_COSINE) or \
        (cosine >= COSINE_HIGH and phash_distance <= MODERATE_HAMMING)


def _candidates(bits: np.ndarray, crop_bits: np.ndarray, groups: np.ndarray) -> dict[tuple[int, int], int]:
    """{(i, j): pHash distance} with i < j and distance <= MODERATE_HAMMING, one member per exact
    group, at most MAX_CANDIDATES_PER_IMAGE (the closest) from each image's row.

    The distance is the smallest between one image's whole or crop hashes and the other's whole
    hash: each row compares its own crops, so both directions are covered over all rows."""
    keep = np.flatnonzero(groups == np.arange(len(groups)))  # a group's first member stands for it
    # As +-1 vectors, a dot product is (bits - 2 x Hamming distance): one matrix product per chunk
    # compares a row's whole and crop hashes with every whole hash.
    whole = signs(bits[keep])
    both = np.concatenate([whole[:, None], signs(crop_bits[keep])], axis=1)  # (M, 10, 63)
    found: dict[tuple[int, int], int] = {}
    step = int(np.clip(CHUNK_CELLS // (max(len(keep), 1) * both.shape[1]), 8, 1024))
    for start in range(0, len(keep), step):
        chunk = both[start:start + step]
        dots = (chunk.reshape(-1, chunk.shape[-1]) @ whole.T).reshape(len(chunk), chunk.shape[1], len(whole)).max(1)
        rows, columns = np.nonzero(dots >= whole.shape[1] - 2 * MODERATE_HAMMING - 0.5)
        other = columns != rows + start
        rows, columns = rows[other], columns[other]
        values = np.rint((whole.shape[1] - dots[rows, columns]) / 2).astype(np.int32)
        order = np.lexsort((values, rows))  # by row, closest first
        rows, columns, values = rows[order], columns[order], values[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position within its row
        chosen = rank < MAX_CANDIDATES_PER_IMAGE
        for row, column, value in zip(rows[chosen], columns[chosen], values[chosen]):
            first, second = sorted((int(keep[row + start]), int(keep[column])))
            found[first, second] = min(int(value), found.get((first, second), 64))
    return found


def crosses_split(pair: DuplicatePair, split_names: list[str] | None) -> bool:
    """True when the two images are in different splits (a copy in val of a training image)."""
    return split_names is not None and split_names[pair.first] != split_names[pair.second]
