"""Early stopping: a stage ends after `patience` epochs without improvement of the monitored metric.

The decision reads only the epoch's validation result, which under torchrun is already summed
across processes (or, on cached features, computed whole by each), so every rank decides alike
and they stop together. Its state, the best value and the epochs since, is part of the
committed progress (state.Progress): a resumed run decides exactly as an uninterrupted one.
Which metrics a task can monitor, and their values, are the task's (task.Task).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...config import TrainConfig
from ...task import LOWER_IS_BETTER, Task
from .._events import Callback

if TYPE_CHECKING:
    from .._loop import Loop
    from ..state import Progress

logger = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """After each epoch's validation: count the epochs without improvement (in `progress`, so the
    commit keeps them) and end the stage after `patience` of them (never after its last epoch)."""

    def __init__(self, config: TrainConfig, task: Task, progress: Progress, stage_name: str) -> None:
        self.config, self.task, self.progress, self.stage_name = config, task, progress, stage_name

    def before_fit(self, loop: Loop) -> None:
        if loop.first_epoch == 0:  # each stage is watched afresh (a resumed one goes on with its count)
            self.progress.monitor_best, self.progress.epochs_without_improvement = None, 0

    def after_validate(self, loop: Loop) -> None:
        tc, progress = self.config, self.progress
        value = self.task.monitor_value(loop.result, tc.monitor)
        progress.monitor_best, progress.epochs_without_improvement = observe(
            progress.monitor_best, progress.epochs_without_improvement, value, tc.monitor, tc.min_delta)
        if progress.epochs_without_improvement < tc.patience or loop.last_epoch:
            return
        logger.info(f"  early stop: {tc.monitor} has not improved on {progress.monitor_best:.4f} by more than "
                    f"{tc.min_delta:g} for {tc.patience} epoch{'s' if tc.patience != 1 else ''}; {self.stage_name} "
                    f"ends after {loop.epoch + 1} of {loop.epochs} epochs")
        loop.stop = True


def observe(best: float | None, waited: int, value: float, monitor: str, min_delta: float) -> tuple[float, int]:
    """(best, epochs without improvement) after one more epoch's `value`.

    An improvement beats the best by more than `min_delta` (lower for losses, higher for the
    rest); the stage's first epoch always sets the best.
    """
    if best is None:
        return value, 0
    improved = value < best - min_delta if monitor in LOWER_IS_BETTER else value > best + min_delta
    return (value, 0) if improved else (best, waited + 1)
