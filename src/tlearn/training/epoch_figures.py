"""What an epoch's validation says, for either task: the metrics.csv and summary figures, the log
line, and the score that picks the best epoch (top-1, balanced accuracy when balancing, mAP for
multi-label data)."""
from __future__ import annotations

from typing import Any

from ..metrics.classification import EvalResult
from ..metrics.multilabel import MultiLabelResult


def result_fields(result: EvalResult | MultiLabelResult) -> dict[str, float]:
    """The val_* figures of metrics.csv rows, stage results and summary.json."""
    if isinstance(result, MultiLabelResult):
        return {"val_map": result.map, "val_f1_micro": result.f1_micro, "val_f1_macro": result.f1_macro}
    return {"val_top1": result.top1, "val_top5": result.top5, "val_balanced_acc": result.balanced_acc,
            "val_f1_macro": result.f1_macro}


def describe(result: EvalResult | MultiLabelResult) -> str:
    if isinstance(result, MultiLabelResult):
        return (f"mAP {result.map:.4f} micro-F1 {result.f1_micro:.4f} macro-F1 {result.f1_macro:.4f} "
                f"(thresholds chosen on val; micro-F1 at 0.5 {result.f1_micro_at_half:.4f})")
    return (f"top1 {result.top1:.4f} top5 {result.top5:.4f} balanced {result.balanced_acc:.4f} "
            f"macro-F1 {result.f1_macro:.4f}")


def selection_score(result: EvalResult | MultiLabelResult, balancing: bool) -> float:
    """What the best epoch maximises: mAP (multi-label), balanced accuracy when balancing, else top-1."""
    if isinstance(result, MultiLabelResult):
        return result.map
    return result.balanced_acc if balancing else result.top1


def train_fields(loss: float, figure: float, multi_label: bool) -> dict[str, Any]:
    """train_loss and the training figure: top-1, or micro F1 at 0.5 for multi-label data."""
    return {"train_loss": loss, "train_f1_micro" if multi_label else "train_top1": figure}
