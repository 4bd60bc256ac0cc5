"""`--accumulate N`: one optimiser step every N micro-batches (gradient accumulation).

Each micro-batch's mean loss is weighted by its share of its group's samples, so the summed
gradient is the gradient of the mean loss over the whole group: the same as one batch N times
larger, for a model whose forward pass does not mix samples (no BatchNorm in train mode). The
last group of an epoch may be shorter (fewer micro-batches, a smaller last batch); its shares
follow its own samples, so it too equals one batch of those samples. To know a group's samples
before its first backward pass, a group's batches are read from the loader together.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from torch import nn

from .._events import Callback, MicroBatch

if TYPE_CHECKING:
    from .._loop import Loop


class Accumulation(Callback):
    """Groups of `accumulate` micro-batches: each one's loss weighted by its share, DDP's gradient
    all-reduce on the group's last only, one optimiser step per group."""

    def __init__(self, accumulate: int) -> None:
        self.accumulate = accumulate

    def before_train(self, loop: Loop) -> None:
        loop.batches = self._grouped(loop.batches, loop)

    def _grouped(self, batches: Iterable, loop: Loop) -> Iterator[tuple[Any, Any]]:
        for inputs, targets, micro in micro_batches(batches, self.accumulate):
            loop.micro = micro
            yield inputs, targets

    def before_batch(self, loop: Loop) -> None:
        # DDP decides in the forward pass whether the backward all-reduces: both go inside no_sync
        loop.hold(gradient_sync(loop.module, loop.micro))

    def before_backward(self, loop: Loop) -> None:
        if loop.micro.share != 1:
            loop.backward_loss = loop.backward_loss * loop.micro.share  # the group's mean loss, summed

    def after_backward(self, loop: Loop) -> None:
        loop.skip_step = not loop.micro.last


def micro_batches(loader: Iterable, accumulate: int) -> Iterator[tuple[Any, Any, MicroBatch]]:
    """(inputs, targets, MicroBatch) for every batch of `loader`, in order, grouped by `accumulate`."""
    batches = iter(loader)
    while group := list(itertools.islice(batches, accumulate)):
        total = sum(len(targets) for _, targets in group)
        for index, (inputs, targets) in enumerate(group):
            yield inputs, targets, MicroBatch(len(targets) / total, index == len(group) - 1)


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimiser (and schedule) steps in an epoch of `batches` micro-batches: the last group counts too."""
    return math.ceil(batches / accumulate)


def gradient_sync(module: nn.Module, micro: MicroBatch) -> contextlib.AbstractContextManager:
    """DDP all-reduces the gradients on every backward pass; only the group's last one needs it."""
    if micro.last or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()
