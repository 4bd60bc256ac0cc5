"""Layer-wise LR decay and unfreezing over the backbone's block groups.

`unfreeze_top` trains the head and the top block groups: `--unfreeze gradual` calls it before
each epoch (callbacks/unfreezing.py), and the LR finder before sweeping such a stage.

`--layer-decay D` (BEiT; timm's `param_groups_layer_decay`): the head is depth 0 at the head
LR, the top block group depth 1, and a group at depth d trains at head LR x D^d. Like timm,
this replaces `--backbone-lr-mult` (config.py refuses both at once). Norms and biases keep
no weight decay.
"""
from __future__ import annotations

import logging

from ..config import TrainConfig
from ..models import BlockGroup, Classifier, describe_groups
from ._optim import optimizer_groups

logger = logging.getLogger(__name__)


def group_lrs(groups: list[BlockGroup], lr: float, layer_decay: float | None) -> list[float] | None:
    """Each group's LR, input first (the top group, depth 1: lr x decay); None without layer decay."""
    if layer_decay is None:
        return None
    return [lr * layer_decay ** (len(groups) - index) for index in range(len(groups))]


def layer_decay_parameter_groups(model: Classifier, groups: list[BlockGroup], config: TrainConfig) -> list[dict]:
    """Optimiser groups: the head, then each block group from the top down, each split into
    weight-decayed tensors and norms/biases; only parameters that train now."""
    lr, weight_decay = config.resolved_lr, config.resolved_weight_decay
    parameters = dict(model.named_parameters())
    lrs = group_lrs(groups, lr, config.layer_decay)
    members = [("head", list(model.head_parameters()), lr)]
    for index in reversed(range(len(groups))):  # top first: metrics.csv's lr_backbone is the top group's
        group = groups[index]
        members.append((f"backbone.{group.name}", [parameters[n] for n in group.parameter_names], lrs[index]))
    return optimizer_groups(members, weight_decay)


def unfreeze_top(model: Classifier, groups: list[BlockGroup], count: int) -> bool:
    """Train the head and the top `count` block groups, freeze the rest of the backbone; True
    when this changed which parameters train."""
    keep = {name for group in groups[max(len(groups) - count, 0):] for name in group.parameter_names}
    head_ids = {id(p) for p in model.head_parameters()}
    changed = False
    for name, parameter in model.named_parameters():
        trains = id(parameter) in head_ids or name in keep
        changed |= parameter.requires_grad != trains
        parameter.requires_grad_(trains)
    return changed


def log_block_groups(groups: list[BlockGroup], config: TrainConfig) -> None:
    """A stage's block groups, input first, with each group's LR under layer decay."""
    lrs = group_lrs(groups, config.resolved_lr, config.layer_decay)
    decay = f", layer decay {config.layer_decay:g} (head lr {config.resolved_lr:.3g})" if lrs else ""
    logger.info(f"  block groups: {len(groups)}, input to output{decay}")
    for line in describe_groups(groups, lrs):
        logger.info(f"  {line}")


def backbone_trains(model: Classifier) -> bool:
    return any(p.requires_grad for p in model.backbone_parameters())

