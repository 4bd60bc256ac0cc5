"""The loop's events: a technique is a `Callback` that acts on some of them (fastai's `Callback`).

A stage's fit (loop.Loop.fit), in the order the events come:

    before_fit                         the stage's epochs (or the LR sweep) begin
    each epoch:
        before_epoch                   before what the epoch trains is set in train mode
        before_train                   `loop.batches` may be wrapped: grouped, timed
        each batch:
            before_batch               the batch is on the device: `loop.inputs`, `targets`, `counted`
            after_loss                 `loop.loss` is known, before the loop checks it is finite
            before_backward            `loop.backward_loss` (the loss back-propagated) may be replaced
            after_backward             `loop.skip_step = True` cancels this batch's optimiser step
            before_step                the optimiser is about to step
            after_step                 after the optimiser and LR schedule steps
        after_validate                 `loop.result` holds the epoch's validation
        after_epoch                    the epoch is over (committed, in a training run)

`loop.stop = True` ends the fit: set during the batches, it ends it after that batch (at
after_loss, before the batch's backward pass), with no validation; at after_validate, after
that epoch. Callbacks run in the order of the loop's list; each reads and writes the loop's
per-batch state (loop.Loop's attributes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._loop import Loop


@dataclass(frozen=True)
class MicroBatch:
    """Where the batch sits in its accumulation group (`loop.micro`; callbacks/accumulation.py)."""

    share: float  # its samples / the group's samples: the weight of its mean loss
    last: bool  # the group's last batch: the optimiser (and the schedule) step after it


class Callback:
    """A technique on the loop's events; every event does nothing unless overridden."""

    def before_fit(self, loop: Loop) -> None:
        """The stage's epochs (or the LR sweep) begin."""

    def before_epoch(self, loop: Loop) -> None:
        """An epoch begins; the loop sets the train mode after this (gradual unfreezing changes what trains)."""

    def before_train(self, loop: Loop) -> None:
        """The epoch's batches are about to be read: `loop.batches` may be wrapped."""

    def before_batch(self, loop: Loop) -> None:
        """The batch is on the device: `loop.inputs`, `loop.targets` and `loop.counted` may be replaced."""

    def after_loss(self, loop: Loop) -> None:
        """`loop.loss` and `loop.logits` are known; the loop checks the loss is finite after this."""

    def before_backward(self, loop: Loop) -> None:
        """`loop.backward_loss` is about to be back-propagated."""

    def after_backward(self, loop: Loop) -> None:
        """The gradients are in; `loop.skip_step = True` cancels this batch's optimiser step."""

    def before_step(self, loop: Loop) -> None:
        """The optimiser is about to step."""

    def after_step(self, loop: Loop) -> None:
        """The optimiser and the LR schedule have stepped."""

    def after_validate(self, loop: Loop) -> None:
        """`loop.result` holds the epoch's validation; `loop.stop = True` ends the stage after this epoch."""

    def after_epoch(self, loop: Loop) -> None:
        """The epoch is over."""
