"""`--unfreeze gradual` (ULMFiT; fastai's `freeze_to(-k)` each epoch): fine-tuning epoch k trains
the head and the top k block groups; once every group trains, the remaining epochs train
everything.

The optimiser holds every parameter from the stage's start: a frozen parameter has no gradient,
so PyTorch's optimisers skip it (no step, no weight decay) and the optimiser state and the LR
schedule run on unchanged from epoch to epoch and across a resume. Frozen BatchNorm runs in
inference mode (the loop sets the train mode after this callback). The block groups and
`--layer-decay` are layer_groups.py's.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...models import Classifier
from ...models.block_groups import BlockGroup, block_groups
from .._events import Callback
from .._layer_groups import unfreeze_top

if TYPE_CHECKING:
    from .._loop import Loop

logger = logging.getLogger(__name__)


class GradualUnfreezing(Callback):
    """Before each epoch, set what it trains; under torchrun, wrap the model in DDP again when that
    changed (DDP syncs only the parameters that trained when it was built)."""

    def __init__(self, model: Classifier) -> None:
        self.model, self.groups = model, block_groups(model)

    def before_epoch(self, loop: Loop) -> None:
        if gradual_epoch(self.model, self.groups, loop.epoch):
            loop.module = loop.train_module()


def gradual_epoch(model: Classifier, groups: list[BlockGroup], epoch: int) -> bool:
    """Set what trains in fine-tuning epoch `epoch` (0-based) and say so; True when that changed."""
    count = min(epoch + 1, len(groups))
    changed = unfreeze_top(model, groups, count)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    which = f"all {count}" if count == len(groups) else \
        f"the top {count} of {len(groups)} (from {groups[len(groups) - count].name})"
    logger.info(f"  epoch {epoch + 1}: head + {which} block groups, trainable params {trainable:,}")
    return changed
