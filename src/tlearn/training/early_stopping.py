"""Early stopping: a stage ends after `patience` epochs without improvement of the monitored metric.

The decision reads only the epoch's validation result, which under torchrun is already summed
across processes (or, on cached features, computed whole by each), so every rank decides alike
and they stop together. Its state, the best value and the epochs since, is part of the
committed progress (train_state.Progress): a resumed run decides exactly as an uninterrupted one.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..metrics.classification import EvalResult
from ..metrics.multilabel import MultiLabelResult

LOWER_IS_BETTER = frozenset({"val_loss"})
SINGLE_LABEL_MONITORS = ("val_loss", "val_top1", "val_balanced_acc")
MULTI_LABEL_MONITORS = ("val_loss", "val_map")


def require_monitor(monitor: str, multi_label: bool = False) -> None:
    """A one-line error, before training, when the task has no such metric."""
    if monitor == "val_map" and not multi_label:
        raise ConfigError(f"--monitor val_map needs multi-label data; single-label runs can monitor "
                          f"{', '.join(SINGLE_LABEL_MONITORS)}")
    if multi_label and monitor not in MULTI_LABEL_MONITORS:
        raise ConfigError(f"--monitor {monitor} is for single-label data; multi-label runs can monitor "
                          f"{', '.join(MULTI_LABEL_MONITORS)}")


def monitor_value(result: EvalResult | MultiLabelResult, monitor: str) -> float:
    multi_label = isinstance(result, MultiLabelResult)
    if multi_label:
        values = {"val_loss": result.loss, "val_map": result.map}
    else:
        values = {"val_loss": result.loss, "val_top1": result.top1, "val_balanced_acc": result.balanced_accuracy}
    if monitor not in values:
        require_monitor(monitor, multi_label)
        raise ConfigError(f"--monitor {monitor} is not available for this run")
    return values[monitor]


def observe(best: float | None, waited: int, value: float, monitor: str, min_delta: float) -> tuple[float, int]:
    """(best, epochs without improvement) after one more epoch's `value`.

    An improvement beats the best by more than `min_delta` (lower for losses, higher for the
    rest); the stage's first epoch always sets the best.
    """
    if best is None:
        return value, 0
    improved = value < best - min_delta if monitor in LOWER_IS_BETTER else value > best + min_delta
    return (value, 0) if improved else (best, waited + 1)
