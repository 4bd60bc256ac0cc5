"""Multi-label classification (`--label-delim`): sigmoid outputs, binary cross-entropy, a threshold per class.

An image may carry any number of the classes, none included. The model's logits are read
one class at a time: probability = sigmoid(logit), and a class is predicted when its
probability is at least that class's threshold. The thresholds are chosen on the validation
split, per class, where that class's F1 is highest (a class without validation positives keeps
0.5), and stored with the model (model.json, the export sidecar).

Metrics, in numpy (scikit-learn's import alone takes seconds; the tests cross-check against it):
average precision per class as scikit-learn's `average_precision_score` computes it (precision
at each distinct score, weighted by the recall it adds), mAP = its mean over the classes with
at least one positive; F1 per class, micro F1 (pooled over classes) and macro F1 (mean over the
classes that occur as label or prediction, as metrics.macro_f1 does for single-label).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import DataError

TASKS = ("single-label", "multi-label")
DEFAULT_THRESHOLD = 0.5


def label_counts(labels, num_classes: int) -> list[int]:
    """Images carrying each class (multi-hot rows)."""
    if not len(labels):
        return [0] * num_classes
    return np.asarray(labels, dtype=np.int64).reshape(len(labels), num_classes).sum(axis=0).tolist()


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class (scikit-learn's definition); nan when the class has no positive."""
    targets = np.asarray(targets) > 0
    positives = int(targets.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores, hits = np.asarray(scores, dtype=np.float64)[order], targets[order]
    # the last position of each distinct score: a threshold takes all tied images or none
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_positives = np.cumsum(hits)[ends]
    predicted = ends + 1
    precision = true_positives / predicted
    recall = true_positives / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1_threshold(scores: np.ndarray, targets: np.ndarray) -> float:
    """The threshold (predict when score >= it) with the best F1 on these scores; 0.5 without positives.

    Candidates are the distinct scores; the threshold returned lies halfway between the chosen
    score and the next lower one, so the same images pass it and a slightly lower score too.
    """
    targets = np.asarray(targets) > 0
    positives = int(targets.sum())
    if positives == 0 or len(scores) == 0:
        return DEFAULT_THRESHOLD
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    true_positives = np.cumsum(targets[order])[ends]
    f1 = 2 * true_positives / (ends + 1 + positives)
    best = int(np.argmax(f1))
    chosen = sorted_scores[ends[best]]
    lower = sorted_scores[ends[best] + 1] if ends[best] + 1 < len(sorted_scores) else 0.0
    return float((chosen + lower) / 2)


def choose_thresholds(probs: np.ndarray, targets: np.ndarray) -> list[float]:
    """Per class, the threshold of best validation F1 (`best_f1_threshold`)."""
    return [best_f1_threshold(probs[:, c], targets[:, c]) for c in range(probs.shape[1])]


def f1_scores(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(F1 per class, micro F1, macro F1) of 0/1 predictions; 0 where undefined."""
    predicted, targets = np.asarray(predicted) > 0, np.asarray(targets) > 0
    true_positive = (predicted & targets).sum(axis=0).astype(np.float64)
    denominator = predicted.sum(axis=0) + targets.sum(axis=0)
    per_class = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    total = denominator.sum()
    micro = float(2 * true_positive.sum() / total) if total else 0.0
    present = denominator > 0
    macro = float(per_class[present].mean()) if present.any() else 0.0
    return per_class, micro, macro


def predict_labels(probs: np.ndarray, thresholds) -> np.ndarray:
    """0/1 predictions: probability >= the class's threshold."""
    return (np.asarray(probs) >= np.asarray(thresholds, dtype=np.float64)[None, :]).astype(np.int64)


def remap_multi_hot(labels: list, names: list[str], class_names: list[str]) -> list[tuple[int, ...]]:
    """Labels over `names` (multi-hot rows, or class indices: one class each) as multi-hot rows over a
    run's `class_names`; a class the run does not know is a DataError."""
    known = {name: i for i, name in enumerate(class_names)}
    present = set()
    for label in labels:
        present.update([label] if isinstance(label, int) else [i for i, v in enumerate(label) if v])
    foreign = [names[i] for i in sorted(present) if names[i] not in known]
    if foreign:
        raise DataError(f"class(es) the model does not know: {', '.join(foreign[:5])}; "
                        f"the model knows {', '.join(class_names[:10])}")
    where = [known.get(name) for name in names]
    rows = []
    for label in labels:
        hot = {where[label]} if isinstance(label, int) else {where[i] for i, v in enumerate(label) if v}
        rows.append(tuple(int(j in hot) for j in range(len(class_names))))
    return rows


def predict_multi_label(probs: torch.Tensor, thresholds: list[float], class_names: list[str]) -> list[dict]:
    """Per image: the classes at or above their thresholds ("labels", "probs", most probable first)
    and every class's probability ("scores")."""
    thresholds = thresholds or [DEFAULT_THRESHOLD] * len(class_names)
    rows = []
    for row in probs.tolist():
        chosen = sorted((i for i, p in enumerate(row) if p >= thresholds[i]), key=lambda i: -row[i])
        rows.append({"labels": [class_names[i] for i in chosen], "probs": [row[i] for i in chosen],
                     "scores": dict(zip(class_names, row)),
                     "label": class_names[chosen[0]] if chosen else None, "prob": row[chosen[0]] if chosen else None})
    return rows


@dataclass
class MultiLabelResult:
    """A multi-label evaluation: mAP, F1 at the thresholds, and per class AP, F1, support."""

    loss: float
    count: int
    map: float
    f1_micro: float
    f1_macro: float
    f1_micro_at_half: float  # at 0.5 for every class
    f1_macro_at_half: float
    ap: list[float]  # nan for a class without positives
    f1: list[float]
    support: list[int]
    thresholds: list[float]
    probs: torch.Tensor | None = field(default=None, repr=False)  # sigmoid rows in loader order
    targets: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self, class_names: list[str]) -> dict:
        per_class = {name: {"ap": None if np.isnan(ap) else ap, "f1": f1, "support": support, "threshold": t}
                     for name, ap, f1, support, t in zip(class_names, self.ap, self.f1, self.support,
                                                          self.thresholds)}
        return {"task": "multi-label", "map": self.map, "f1_micro": self.f1_micro, "f1_macro": self.f1_macro,
                "f1_micro_at_0.5": self.f1_micro_at_half, "f1_macro_at_0.5": self.f1_macro_at_half,
                "loss": self.loss, "count": self.count, "per_class": per_class}


def score(probs: np.ndarray, targets: np.ndarray, thresholds=None, loss: float = 0.0) -> MultiLabelResult:
    """Every multi-label figure of `probs` against multi-hot `targets`; thresholds None: chosen
    on these very images (the validation split's own, during training)."""
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets) > 0
    num_classes = probs.shape[1] if probs.ndim == 2 else 0
    if thresholds is None:
        thresholds = choose_thresholds(probs, targets)
    thresholds = [float(t) for t in thresholds] or [DEFAULT_THRESHOLD] * num_classes
    ap = [average_precision(probs[:, c], targets[:, c]) for c in range(num_classes)]
    known = [a for a in ap if not np.isnan(a)]
    per_class, micro, macro = f1_scores(predict_labels(probs, thresholds), targets)
    _, micro_half, macro_half = f1_scores(predict_labels(probs, [DEFAULT_THRESHOLD] * num_classes), targets)
    return MultiLabelResult(loss, len(probs), float(np.mean(known)) if known else 0.0, micro, macro, micro_half,
                            macro_half, ap, per_class.tolist(), targets.sum(axis=0).astype(int).tolist(), thresholds)


class MultiLabelMeter:
    """Accumulates a multi-label pass batch by batch: loss, F1 counts at 0.5, and (`keep_probs`)
    every probability, which mAP and the thresholds need."""

    def __init__(self, num_classes: int, keep_probs: bool = True):
        self.num_classes = num_classes
        self.probs: list[torch.Tensor] | None = [] if keep_probs else None
        self.targets: list[torch.Tensor] = []
        self.counts = torch.zeros(3, num_classes, dtype=torch.int64)  # true positives, predicted, actual
        self.loss_sum = torch.zeros(1, dtype=torch.float64)
        self.seen = torch.zeros(1, dtype=torch.int64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: float | None = None) -> None:
        probs, targets = logits.detach().float().cpu().sigmoid(), targets.detach().cpu() > 0.5
        predicted = probs >= DEFAULT_THRESHOLD
        self.counts += torch.stack([(predicted & targets).sum(0), predicted.sum(0), targets.sum(0)])
        if loss is not None:
            self.loss_sum += loss * len(targets)
        self.seen += len(targets)
        if self.probs is not None:
            self.probs.append(probs)
            self.targets.append(targets)

    @property
    def top1(self) -> float:
        """Micro F1 at 0.5: the progress bar's and metrics.csv's training figure."""
        true_positive, predicted, actual = self.counts.sum(1).tolist()
        return 2 * true_positive / (predicted + actual) if predicted + actual else 0.0

    def reduce(self, runtime) -> None:
        """Sum across torchrun processes; the kept rows of process r are images r, r + W, ... (the
        validation sampler's unpadded stride), put back in order."""
        local = int(self.seen)
        for tensor in (self.counts, self.loss_sum, self.seen):
            tensor.copy_(runtime.sum_across_processes(tensor.to(runtime.device)).cpu())
        if self.probs is None or not runtime.distributed:
            return
        total = int(self.seen)
        for name, rows in (("probs", self.probs), ("targets", self.targets)):
            whole = torch.zeros(total, self.num_classes, dtype=torch.float32)
            if local:
                whole[runtime.rank::runtime.world_size] = torch.cat(rows).float()
            setattr(self, name, [runtime.sum_across_processes(whole.to(runtime.device)).cpu()])

    def result(self, thresholds=None) -> MultiLabelResult:
        loss = float(self.loss_sum) / max(int(self.seen), 1)
        probs = torch.cat(self.probs) if self.probs else torch.zeros(0, self.num_classes)
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, self.num_classes)
        result = score(probs.numpy(), targets.numpy(), thresholds, loss)
        result.probs, result.targets = probs, targets.float()
        return result


class TrainMeter(MultiLabelMeter):
    """The training loop's meter: loss and micro F1 at 0.5, no probabilities kept."""

    def __init__(self, num_classes: int):
        super().__init__(num_classes, keep_probs=False)

    def result(self, thresholds=None):
        return _TrainFigures(float(self.loss_sum) / max(int(self.seen), 1), self.top1)


@dataclass
class _TrainFigures:
    loss: float
    top1: float  # micro F1 at 0.5
