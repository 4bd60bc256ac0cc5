"""`tlearn suggest`: the pool's unlabelled images worth labelling next, as a CSV.

Every image under the pool that the labels table does not list is a candidate. The choice is
ProbCover, then TypiClust once half the pool is covered (_choice.py), on the cached features, cold
start or not; near-duplicates (the audit's
perceptual hash) never share a round. With labels of two classes or more, each suggestion also
carries the calibrated probe's guess, so the person labelling can confirm rather than type.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audit import MIN_COSINE, NEAR_HAMMING, perceptual_hash_bits
from ..data import FileIndex, open_rgb
from ..errors import DataError
from ..features import FeatureScaler, cross_validate, fit_probe
from ..files import atomic_write
from ._choice import cover_picks
from .answers import AnswerTable
from .pool import Backbone, Pool, pool_features, scan_pool

COLUMNS = ("path", "rank", "score", "guess", "guess_prob", "reason")


@dataclass
class Labels:
    """The labels a table gives the pool's images: pool index -> class name; `answered` also holds
    the rows without a label (skipped: not suggested again)."""

    by_index: dict[int, str]
    answered: set[int]
    order: list[int] = field(default_factory=list)  # the answered images in table order

    @property
    def class_names(self) -> list[str]:
        return sorted(set(self.by_index.values()))


@dataclass
class Suggestion:
    path: str
    rank: int
    score: float  # images its pick newly covers (ProbCover), or its typicality in its cluster (TypiClust)
    guess: str
    guess_prob: float | None
    reason: str


def read_pool_labels(pool: Pool, labels: str | Path | None) -> Labels:
    """The table's rows matched to the pool's images; a row naming a file outside the pool is an error.
    A removed row (`removed` = 1) counts as answered, with no label."""
    if labels is None or not Path(labels).exists():
        return Labels({}, set())
    table = AnswerTable(labels).read()
    index, files = pool.index, None
    by_index, answered, order = {}, set(), []
    for number, row in enumerate(table.rows, start=2):
        cell = row[table.path_col].strip()
        position = index.get(cell)
        if position is None:
            files = files or FileIndex(pool.root)
            path, reason = files.resolve(cell)
            relative = os.path.relpath(path, pool.root).replace(os.sep, "/")
            if reason is not None or relative not in index:
                raise DataError(f"{labels} row {number}: {cell!r} is not an image of the pool {pool.root}"
                                + (f" ({reason})" if reason else ""))
            position = index[relative]
        if position not in answered:
            order.append(position)
        answered.add(position)
        if table.label(row) and not table.is_removed(row):
            by_index[position] = table.label(row)
    return Labels(by_index, answered, order)


def suggest(pool_root: str | Path, count: int, backbone: Backbone, labels: str | Path | None = None,
            seed: int = 0) -> list[Suggestion]:
    """The `count` images of the pool to label next, best first."""
    pool = scan_pool(pool_root)
    known = read_pool_labels(pool, labels)
    raw = pool_features(pool, backbone)
    features = FeatureScaler.of(raw)(raw)
    answered = np.zeros(len(pool), dtype=bool)
    answered[list(known.answered)] = True
    if answered.all():
        raise DataError(f"every image of the pool {pool.root} is in the labels table: nothing left to suggest")
    picks = choose(pool, raw, features, answered, count, seed)
    guesses = _guesses(features, known, picks, seed)
    cold = len(known.class_names) < 2
    return [Suggestion(pool.paths[index], rank, round(score, 4), *guesses[rank - 1],
                       reason=("cold start: " if cold else "") + why)
            for rank, (index, score, why) in enumerate(picks, start=1)]


def choose(pool: Pool, raw: np.ndarray, features: np.ndarray, answered: np.ndarray, count: int,
           seed: int = 0) -> list[tuple[int, float, str]]:
    """The rule's `count` picks among the unanswered images, as (index, score, why), no two of them
    near-copies (the audit's rule: perceptual hashes close and features not unlike)."""
    unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    hashes: dict[int, np.ndarray] = {}

    def distinct(candidate: int, picks: list[int]) -> bool:
        hashes[candidate] = perceptual_hash_bits(open_rgb(pool.full_path(pool.paths[candidate])))
        return not any(int((hashes[candidate] != hashes[pick]).sum()) <= NEAR_HAMMING
                       and float(unit[candidate] @ unit[pick]) >= MIN_COSINE for pick in picks)

    return cover_picks(features, answered, count, seed, accept=distinct)


def _guesses(features: np.ndarray, known: Labels, picks: list, seed: int) -> list[tuple[str, float | None]]:
    """(guess, calibrated probability) per pick; empty below two labelled classes."""
    names = known.class_names
    if len(names) < 2:
        return [("", None)] * len(picks)
    indices = np.array(sorted(known.by_index))
    targets = np.array([names.index(known.by_index[i]) for i in indices])
    probe = fit_probe(features[indices], targets, len(names))
    validation = cross_validate(features[indices], targets, len(names), seed=seed)
    probabilities = probe.probabilities(features[[index for index, _, _ in picks]],
                                        validation.temperature if validation else 1.0)
    return [(names[int(row.argmax())], round(float(row.max()), 4)) for row in probabilities]


def write_suggestions(suggestions: list[Suggestion], out: str | Path) -> None:
    """path,rank,score,guess,guess_prob,reason; written atomically."""
    lines = [",".join(COLUMNS)]
    for row in suggestions:
        cells = [row.path, row.rank, row.score, row.guess, "" if row.guess_prob is None else row.guess_prob, row.reason]
        lines.append(_csv_line(cells))
    atomic_write(Path(out), "\n".join(lines) + "\n")


def _csv_line(cells: list) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue()
