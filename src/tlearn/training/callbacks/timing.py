"""Where an epoch's training time went (metrics.csv's data_seconds, compute_seconds and
optimizer_seconds): waiting for the loader, the batch's way to the device, forward and backward,
and the optimiser step with everything after it (the schedule, the EMA's update). On CUDA the
split is approximate: kernels run asynchronously. Validation's seconds are the loop's own."""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ...metrics import EpochStats
from .._events import Callback

if TYPE_CHECKING:
    from .._loop import Loop


class TimeSplit(Callback):
    """Adds its seconds to `loop.stats`. Last in the loop's list: the optimiser's seconds then include
    the other callbacks' work after the step, and the time waited includes the grouping of batches."""

    def __init__(self) -> None:
        self.arrived = self.backward_done = 0.0

    def before_train(self, loop: Loop) -> None:
        loop.batches = self._timed(loop.batches, loop.stats)

    def _timed(self, batches: Iterable, stats: EpochStats) -> Iterator[Any]:
        """The batches as they come, timing the wait for each."""
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.arrived = time.perf_counter()
            stats.data_seconds += self.arrived - asked
            yield batch

    def after_backward(self, loop: Loop) -> None:
        self.backward_done = time.perf_counter()
        loop.stats.compute_seconds += self.backward_done - self.arrived

    def after_step(self, loop: Loop) -> None:
        loop.stats.optimizer_seconds += time.perf_counter() - self.backward_done
