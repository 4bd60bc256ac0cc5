"""Which images to label next, from the pool's features alone or with a probe's guesses.

Cold start and later rounds both use TypiClust (Hacohen et al. 2022): k-means into as many clusters
as there are labels after this round (labelled + N), then, from the largest clusters that hold no
labelled image yet, each cluster's most typical image (typicality: the inverse of its mean distance
to its nearest neighbours in the cluster). The first round so covers the data; later rounds cover
what the labels so far have not reached. The probe's top-2 margin (uncertainty) is measured as an
alternative in benchmarks/active_learning.py: it lost 4.7 points at 20 labels and gained nothing
that outlasted the seeds' noise later (docs/labelling.md), so it is not part of the rule.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

NEIGHBOURS = 20  # typicality's neighbourhood (the paper's choice)
KMEANS_DIMENSIONS = 64  # k-means runs on a PCA projection: the same clusters, minutes less on 2 cores
MINIBATCH_ABOVE = 50  # clusters above which k-means is mini-batch (as the paper's code)


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
