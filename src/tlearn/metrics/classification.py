"""Top-k accuracy, per-class accuracy, balanced accuracy, macro-F1 and the confusion matrix,
accumulated batch by batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EpochStats:
    """One training epoch's figures (validation comes as an EvalResult)."""

    loss: float
    top1: float
    images_per_s: float = 0.0
    seconds: float = 0.0
    data_seconds: float = 0.0  # waiting for the next batch (decoding, unless workers kept up)
    compute_seconds: float = 0.0  # forward and backward passes (an L-BFGS solve: all of it)
    optimizer_seconds: float = 0.0  # optimiser and LR schedule steps
    eval_seconds: float = 0.0  # the validation pass after the epoch


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    per_class: list[float]  # recall of each class (accuracy on its images)
    balanced_acc: float = 0.0  # mean recall over the classes present (scikit-learn's balanced_accuracy_score)
    f1_macro: float = 0.0  # mean F1 over the classes present or predicted (scikit-learn's f1_score, macro)
    probs: torch.Tensor | None = field(default=None, repr=False)  # softmax rows in loader order, when kept

    @property
    def balanced_accuracy(self) -> float:
        """Mean recall over the classes that have validation images (early stopping's monitor;
        equals `balanced_acc` of a meter's result)."""
        recalls = [recall for recall, row in zip(self.per_class, self.confusion) if sum(row)]
        return sum(recalls) / len(recalls) if recalls else 0.0

    def to_dict(self, class_names: list[str] | None = None) -> dict:
        per_class = (dict(zip(class_names, self.per_class)) if class_names else self.per_class)
        return {"top1": self.top1, "top5": self.top5, "balanced_acc": self.balanced_acc, "f1_macro": self.f1_macro,
                "loss": self.loss, "count": self.count, "per_class": per_class, "confusion": self.confusion}


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """Mean recall over the classes that have images: what top-1 would be on a balanced set."""
    support = confusion.sum(dim=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((confusion.diag()[present].double() / support[present]).mean())


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 = 2 tp / (2 tp + fp + fn) over the classes that occur as label or prediction."""
    true_positive = confusion.diag().double()
    support, predicted = confusion.sum(dim=1).double(), confusion.sum(dim=0).double()
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    return float((2 * true_positive[present] / (support[present] + predicted[present])).mean())


class ClassificationMeter:
    def __init__(self, num_classes: int, keep_probs: bool = False):
        self.num_classes = num_classes
        self.probs: list[torch.Tensor] | None = [] if keep_probs else None
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.topk_correct = torch.zeros(1, dtype=torch.int64)
        self.loss_sum = torch.zeros(1, dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss: float | None = None) -> None:
        logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
        predictions = logits.argmax(dim=1)
        index = targets * self.num_classes + predictions
        self.confusion += torch.bincount(index, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes)
        k = min(5, self.num_classes)
        topk = logits.topk(k, dim=1).indices
        self.topk_correct += (topk == targets[:, None]).any(dim=1).sum()
        if loss is not None:
            self.loss_sum += loss * len(targets)
        if self.probs is not None:
            self.probs.append(logits.softmax(dim=1))

    def reduce(self, runtime) -> None:
        """Sum across torchrun processes (each evaluated a disjoint shard)."""
        for tensor in (self.confusion, self.topk_correct, self.loss_sum):
            reduced = runtime.sum_across_processes(tensor.to(runtime.device))
            tensor.copy_(reduced.cpu())

    def result(self) -> EvalResult:
        count = int(self.confusion.sum())
        correct = int(self.confusion.diag().sum())
        support = self.confusion.sum(dim=1)
        per_class = [float(self.confusion[i, i]) / float(n) if n else 0.0 for i, n in enumerate(support.tolist())]
        return EvalResult(
            loss=float(self.loss_sum) / max(count, 1),
            top1=correct / max(count, 1),
            top5=int(self.topk_correct) / max(count, 1),
            count=count,
            confusion=self.confusion.tolist(),
            per_class=per_class,
            balanced_acc=balanced_accuracy(self.confusion),
            f1_macro=macro_f1(self.confusion),
            probs=torch.cat(self.probs) if self.probs else None,
        )


def per_class_scores(predictions, labels, class_names: list[str]) -> dict[str, dict[str, float | int]]:
    """Each class's precision, recall, F1 and support (its images) from predicted and true class
    indices: the model card's per-class table (summary.json's val_per_class)."""
    num_classes = len(class_names)
    predictions, labels = torch.as_tensor(predictions).long(), torch.as_tensor(labels).long()
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2).view(
        num_classes, num_classes).double()
    hits, support, predicted = confusion.diag(), confusion.sum(dim=1), confusion.sum(dim=0)
    scores = {}
    for index, name in enumerate(class_names):
        precision = float(hits[index] / predicted[index]) if predicted[index] else 0.0
        recall = float(hits[index] / support[index]) if support[index] else 0.0
        both = support[index] + predicted[index]
        scores[name] = {"precision": round(precision, 6), "recall": round(recall, 6),
                        "f1": round(float(2 * hits[index] / both), 6) if both else 0.0, "support": int(support[index])}
    return scores
