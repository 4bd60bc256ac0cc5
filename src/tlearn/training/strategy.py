"""Which parameters train, in which mode, at which learning rate: freezing and stages.

fastai's semantics: a new head on a pretrained body; `two-stage` trains the head with the
body frozen, then everything with a lower LR for the body. Keras' rule: a frozen
BatchNorm runs in inference mode, so its running statistics never move. `as-is` trains
exactly what the user left trainable (`tlearn.freeze(model, unfreeze_last=2)` then `fit`).

A `Stage` decides everything about itself once, in `plan_stages`: what trains, whether it
runs on cached features, which solver, and its real epoch count (an L-BFGS solve is one).
Resume compares progress against those same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import RunConfig, TrainConfig
from ..models import Classifier
from ..models.block_groups import block_groups
from ._layer_groups import layer_decay_parameter_groups
from ._optim import optimizer_groups

_BATCHNORM = (nn.modules.batchnorm._BatchNorm,)


def freeze(model: Classifier, *, unfreeze_last: int = 0, train_bn: bool = False) -> Classifier:
    """Freeze the backbone, leaving the new head (and auxiliary heads) trainable.

    `unfreeze_last` keeps the last N top-level backbone blocks trainable too;
    `train_bn` keeps BatchNorm affine parameters trainable (fastai's `train_bn`).
    """
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(False)
    for parameter in model.head_parameters():
        parameter.requires_grad_(True)
    if unfreeze_last > 0:
        blocks = [m for m in model.backbone.children() if any(True for _ in m.parameters())]
        for block in blocks[-unfreeze_last:]:
            block.requires_grad_(True)
    if train_bn:
        for module in model.backbone.modules():
            if isinstance(module, _BATCHNORM):
                module.requires_grad_(True)
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(True)
    return model


def set_train_mode(model: Classifier, bn_train: bool = False) -> Classifier:
    """`model.train()`, except frozen parts run in inference mode.

    A fully frozen backbone goes to eval (BatchNorm statistics fixed, dropout off); in a
    partly frozen one, every BatchNorm without trainable parameters goes to eval. While
    fine-tuning, BatchNorm keeps its running statistics too unless `bn_train` (Keras'
    advice: the head was fitted to features under those statistics; batch statistics of
    small batches at small resolutions would pull the features away from it).
    """
    model.train()
    backbone_trainable = any(p.requires_grad for p in model.backbone_parameters())
    if not backbone_trainable:
        model.backbone.eval()
        for module in model.head_modules():
            module.train()
        return model
    for module in model.backbone.modules():
        if isinstance(module, _BATCHNORM) and (
                not bn_train or not any(p.requires_grad for p in module.parameters())):
            module.eval()
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(name for name, p in model.named_parameters() if p.requires_grad)


@dataclass(frozen=True)
class Stage:
    name: str  # "linear-probe" | "finetune" | "as-is": what logs, metrics.csv and summary.json say
    epochs: int  # the real count: an L-BFGS solve is one
    trains: str  # "head" (plus `unfreeze_last` blocks) | "all" | "as-is" (the names in `trainable`)
    augment: str  # training augmentation of this stage: one of config.AUGMENTS
    on_features: bool = False  # backbone frozen, inputs fixed: the head trains on cached features
    solver: str = "sgd"  # "lbfgs": one full-batch solve on the features | "sgd": epochs of the optimiser
    unfreeze_last: int = 0
    trainable: tuple[str, ...] = ()  # as-is: the parameters the user left trainable
    gradual: bool = False  # --unfreeze gradual: epoch k trains the head and the top k block groups (layer_groups.py)

    def apply(self, model: Classifier) -> None:
        if self.trains == "all":
            unfreeze(model)
        elif self.trains == "head":
            freeze(model, unfreeze_last=self.unfreeze_last)
        else:
            keep = set(self.trainable)
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name in keep)


def plan_stages(config: RunConfig, model: Classifier, as_is_trainable: tuple[str, ...] = ()) -> list[Stage]:
    """The run's stages, each complete: nothing about a stage is decided later."""
    tc, dc = config.train, config.data
    probe_augment = "none" if dc.augment == "none" else dc.probe_augment
    linear_head = isinstance(model.head, nn.Linear)

    def probe(epochs: int, unfreeze_last: int) -> Stage:
        on_features = unfreeze_last == 0 and probe_augment == "none"
        if on_features and tc.head_solver == "lbfgs" and linear_head:
            return Stage("linear-probe", 1, "head", "none", True, "lbfgs")
        return Stage("linear-probe", epochs, "head", probe_augment, on_features, "sgd", unfreeze_last)

    if tc.strategy == "linear-probe":
        return [probe(tc.epochs, tc.unfreeze_last)]
    gradual = tc.unfreeze == "gradual"
    if tc.strategy == "finetune":
        return [Stage("finetune", tc.epochs, "all", dc.augment, gradual=gradual)]
    if tc.strategy == "as-is":
        return [_as_is_stage(model, tc.epochs, as_is_trainable, probe_augment, dc.augment)]
    stages = []
    if tc.head_epochs > 0:
        stages.append(probe(tc.head_epochs, tc.unfreeze_last))
    if tc.epochs > 0:
        stages.append(Stage("finetune", tc.epochs, "all", dc.augment, gradual=gradual))
    return stages


def _as_is_stage(model: Classifier, epochs: int, trainable: tuple[str, ...], probe_augment: str,
                 augment: str) -> Stage:
    """The user's own flags; a frozen backbone under a fully trainable head still uses the cache."""
    keep = set(trainable)
    head_ids = {id(p) for p in model.head_parameters()}
    head_names = {name for name, p in model.named_parameters() if id(p) in head_ids}
    backbone_frozen = not (keep - head_names)
    head_trains = head_names <= keep
    on_features = backbone_frozen and head_trains and probe_augment == "none"
    return Stage("as-is", epochs, "as-is", probe_augment if backbone_frozen else augment, on_features, "sgd",
                 trainable=tuple(sorted(keep)))


def parameter_groups(model: Classifier, config: TrainConfig) -> list[dict]:
    """Head at the base LR; a trainable backbone at LR x backbone_lr_mult (no decay on norms/biases),
    or with layer decay an LR per block group (layer_groups.py)."""
    if config.layer_decay is not None:
        return layer_decay_parameter_groups(model, block_groups(model), config)
    lr = config.resolved_lr
    return optimizer_groups([("head", list(model.head_parameters()), lr),
                             ("backbone", list(model.backbone_parameters()), lr * config.backbone_lr_mult)],
                            config.resolved_weight_decay)
