"""Which images to label next, from the pool's features alone or with a probe's guesses.

Every round is ProbCover (Yehuda et al. 2022, "Active learning through a covering lens"): each
image owns a ball in the feature space (rows L2-normalised; the radius: the median distance from an
image to its COVER_NEIGHBOURS-th nearest neighbour), and each pick is the image whose ball holds the
most images that no labelled or picked image's ball holds yet. Cold start and later rounds are one
greedy sequence, so rounds of any size give the same picks. Chosen on benchmark set A against
TypiClust (`typical_picks`, the former rule; kept for the few picks left once every image is
covered), the paper's purity rule for the radius, and the probe's top-2 margin (uncertainty), which
lost at every budget from 20 labels (docs/labelling.md).
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from collections.abc import Callable

import numpy as np

NEIGHBOURS = 20  # typicality's neighbourhood (the paper's choice)
KMEANS_DIMENSIONS = 64  # k-means runs on a PCA projection: the same clusters, minutes less on 2 cores
MINIBATCH_ABOVE = 50  # clusters above which k-means is mini-batch (as the paper's code)
COVER_NEIGHBOURS = 10  # the ball's radius reaches a median image's 10th neighbour (8 to 12 best on set A, 96 px)
COVER_UNTIL = 0.5  # the share of the pool covered after which TypiClust picks (on set A: about 100 labels)


def typicality(features: np.ndarray) -> np.ndarray:
    """1 / mean distance to the NEIGHBOURS nearest other members (all of them in a small cluster)."""
    if len(features) == 1:
        return np.ones(1)
    squared = (features ** 2).sum(axis=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * features @ features.T, 0))
    neighbours = min(NEIGHBOURS, len(features) - 1)
    nearest = np.sort(distances, axis=1)[:, 1:neighbours + 1]  # column 0 is the image itself
    return 1.0 / (nearest.mean(axis=1) + 1e-12)


def cluster(features: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """Each image's k-means cluster, on a PCA projection of the scaled features."""
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning

    dimensions = min(KMEANS_DIMENSIONS, features.shape[1], len(features))
    projected = PCA(dimensions, random_state=seed).fit_transform(features)
    if clusters <= MINIBATCH_ABOVE:
        model = KMeans(clusters, n_init=1, random_state=seed)
    else:
        model = MiniBatchKMeans(clusters, n_init=1, random_state=seed, batch_size=max(1024, 5 * clusters))
    with warnings.catch_warnings():  # fewer distinct images than clusters (copies): some clusters stay empty
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit_predict(projected)


def typical_picks(features: np.ndarray, labelled: np.ndarray, count: int, seed: int = 0,
                  accept: Callable[[int, list[int]], bool] | None = None) -> list[tuple[int, float, str]]:
    """`count` pool images to label next (TypiClust), as (index, typicality, why); `labelled` is a
    bool mask over the pool.
    `accept(index, picks)` may refuse a candidate (a near-duplicate of an earlier pick): the
    cluster's next most typical image is tried instead."""
    unlabelled = np.flatnonzero(~labelled)
    count = min(count, len(unlabelled))
    if count == 0:
        return []
    clusters = min(int(labelled.sum()) + count, len(features))
    assignment = cluster(features, clusters, seed)
    sizes = np.bincount(assignment, minlength=clusters)
    covered = np.bincount(assignment[labelled], minlength=clusters)
    picks: list[int] = []
    chosen_with: list[tuple[int, float, str]] = []
    taken = labelled.copy()
    while len(picks) < count:
        free = np.bincount(assignment[~taken], minlength=clusters)
        # fewest labels first, then the largest: the paper's order (ties to the lower cluster id)
        order = sorted((c for c in range(clusters) if free[c]), key=lambda c: (covered[c], -sizes[c], c))
        if not order:  # every image left was refused
            break
        for chosen in order[:count - len(picks)]:
            members = np.flatnonzero(assignment == chosen)
            scores = typicality(features[members])
            for position in np.argsort(-scores, kind="stable"):
                candidate = int(members[position])
                if taken[candidate]:
                    continue
                taken[candidate] = True  # refused or picked: not offered again this round
                if accept is None or accept(candidate, picks):
                    why = (f"most typical of a cluster of {sizes[chosen]} with no label yet" if not covered[chosen]
                           else f"most typical left of a cluster of {sizes[chosen]} with {covered[chosen]} label(s)")
                    picks.append(candidate)
                    chosen_with.append((candidate, float(scores[position]), why))
                    covered[chosen] += 1
                    break
    return chosen_with


def cover_radius(unit: np.ndarray, neighbours: int = COVER_NEIGHBOURS) -> float:
    """The median distance from an image to its `neighbours`-th nearest other image (unit rows)."""
    from sklearn.neighbors import NearestNeighbors

    reach = min(neighbours + 1, len(unit))  # the image itself comes first
    distances, _ = NearestNeighbors(n_neighbors=reach).fit(unit).kneighbors(unit)
    return float(np.median(distances[:, -1]))


_BALLS: dict[bytes, tuple[float, object]] = {}  # the last pools' balls, by a digest of their features
_BALLS_KEPT = 2
_BALLS_LOCK = threading.Lock()


def cover_balls(features: np.ndarray) -> tuple[float, object]:
    """(radius, the pool's balls: a symmetric 0/1 sparse matrix, row i the images within the radius of
    image i). Cached by the features' content: the label page plans a round every few answers over
    the same pool, and the neighbour search grows with the square of the pool (about 3 s for 5,000
    images, 23 s for 20,000 on 2 idle cores), while a digest of the features takes milliseconds."""
    from sklearn.neighbors import NearestNeighbors

    features = np.ascontiguousarray(features)
    key = hashlib.blake2b(features.tobytes(), digest_size=16).digest() + repr(features.shape).encode()
    with _BALLS_LOCK:  # one search at a time: two threads planning over one pool wait for the first
        if key not in _BALLS:
            unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
            radius = cover_radius(unit)
            balls = NearestNeighbors(radius=radius).fit(unit).radius_neighbors_graph(unit).tocsr()
            balls.data[:] = 1
            while len(_BALLS) >= _BALLS_KEPT:
                _BALLS.pop(next(iter(_BALLS)))
            _BALLS[key] = (radius, balls)
        return _BALLS[key]


def cover_picks(features: np.ndarray, labelled: np.ndarray, count: int, seed: int = 0,
                accept: Callable[[int, list[int]], bool] | None = None,
                until: float = COVER_UNTIL) -> list[tuple[int, float, str]]:
    """`count` pool images to label next (ProbCover's greedy max coverage), as (index, images newly
    covered, why); `labelled` is a bool mask over the pool. `accept` as typical_picks's. Once every
    image is covered, or the share `until` of the pool, the rest of the round is TypiClust's."""
    radius, balls = cover_balls(features)
    covered = np.zeros(len(features), dtype=bool)
    covered[balls[np.flatnonzero(labelled)].indices] = True
    gain = np.asarray(balls @ (~covered).astype(np.int64)).ravel()  # uncovered images in each ball
    taken, picks, chosen_with = labelled.copy(), [], []
    while len(picks) < count and covered.mean() < until:
        best = int(np.argmax(np.where(taken, -1, gain)))
        if taken[best] or gain[best] <= 0:  # nothing left to pick, or every ball left is covered
            break
        taken[best] = True  # refused or picked: not offered again this round
        if accept is not None and not accept(best, picks):
            continue
        ball = balls[best].indices
        newly = ball[~covered[ball]]
        covered[newly] = True
        gain -= np.asarray(balls[newly].sum(axis=0)).ravel().astype(np.int64)
        picks.append(best)
        chosen_with.append((best, float(len(newly)), f"covers {len(newly)} images no label's neighbourhood "
                                                      f"reached (of {len(ball)} within radius {radius:.2f})"))
    if len(picks) < count and not taken.all():
        after = labelled.copy()
        after[picks] = True
        chosen_with += typical_picks(features, after, count - len(picks), seed,
                                     None if accept is None else lambda index, more: accept(index, picks + more))
    return chosen_with


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row: small is uncertain."""
    if probabilities.shape[1] < 2:
        return np.ones(len(probabilities))
    top = np.sort(probabilities, axis=1)
    return top[:, -1] - top[:, -2]


def margin_picks(probabilities: np.ndarray, labelled: np.ndarray, count: int) -> list[int]:
    """The `count` unlabelled images with the smallest margin (uncertainty sampling, the alternative
    the benchmark measures)."""
    unlabelled = np.flatnonzero(~labelled)
    order = unlabelled[np.argsort(margins(probabilities[unlabelled]), kind="stable")]
    return [int(index) for index in order[:count]]
