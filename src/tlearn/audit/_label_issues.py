"""Likely label errors: out-of-fold probabilities from a linear probe on the backbone features.

Confident learning (Northcutt, Jiang and Chuang, JAIR 2021) in its simplest ranking form:
each image is scored by a model that never saw it (k-fold logistic regression on the cached
features), and the images whose given label gets the lowest probability are the most
suspicious; the suggested label is the out-of-fold argmax. Single-label data only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

FOLDS = 5
PROBE_C = 0.1  # inverse L2 strength on standardised features (chosen on the seed-1 sample, README)


@dataclass(frozen=True)
class LabelIssue:
    index: int
    given: int
    suggested: int
    score: float  # out-of-fold probability of the given label: lowest first


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                              folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """(N, num_classes) probabilities, each row from a probe trained on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    splits = max(2, min(folds, int(counts[counts > 0].max())))
    probs = np.zeros((len(labels), num_classes))
    with warnings.catch_warnings():  # a class smaller than the folds is expected in the wild
        warnings.simplefilter("ignore", UserWarning)
        folder = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
        for train, held_out in folder.split(features, labels):
            if len(np.unique(labels[train])) < 2:  # nothing to learn: no opinion
                probs[held_out] = 1.0 / num_classes
                continue
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
            probe.fit(features[train], labels[train])
            classes = probe.classes_  # a class absent from these training folds gets probability 0
            probs[np.ix_(held_out, classes)] = probe.predict_proba(features[held_out])
    return probs


def rank_label_issues(probs: np.ndarray, labels: np.ndarray) -> list[LabelIssue]:
    """Images whose out-of-fold argmax is not their label, the given label's lowest probability first."""
    given_probability = probs[np.arange(len(labels)), labels]
    suggested = probs.argmax(1)
    flagged = np.flatnonzero(suggested != labels)
    flagged = flagged[np.argsort(given_probability[flagged], kind="stable")]
    return [LabelIssue(int(i), int(labels[i]), int(suggested[i]), round(float(given_probability[i]), 4))
            for i in flagged]


def find_label_issues(features: np.ndarray, labels: list[int], num_classes: int, seed: int = 0) -> list[LabelIssue]:
    """The ranked issues of a single-label data set (see the module docstring)."""
    labels_array = np.asarray(labels, dtype=np.int64)
    return rank_label_issues(out_of_fold_probabilities(features, labels_array, num_classes, seed=seed), labels_array)
