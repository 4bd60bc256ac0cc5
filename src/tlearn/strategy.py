"""Which parameters train, in which mode, at which learning rate: freezing and stages.

fastai's semantics: a new head on a pretrained body; `two-stage` trains the head with the
body frozen, then everything with a lower LR for the body. Keras' rule: a frozen
BatchNorm runs in inference mode, so its running statistics never move.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .config import TrainConfig
from .models.classifier import Classifier

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


@dataclass(frozen=True)
class Stage:
    name: str  # "linear-probe" | "finetune"
    epochs: int
    train_backbone: bool

    def apply(self, model: Classifier) -> None:
        if self.train_backbone:
            unfreeze(model)
        else:
            freeze(model)


def plan_stages(config: TrainConfig) -> list[Stage]:
    if config.strategy == "linear-probe":
        return [Stage("linear-probe", config.epochs, False)]
    if config.strategy == "finetune":
        return [Stage("finetune", config.epochs, True)]
    stages = []
    if config.head_epochs > 0:
        stages.append(Stage("linear-probe", config.head_epochs, False))
    if config.epochs > 0:
        stages.append(Stage("finetune", config.epochs, True))
    return stages


def parameter_groups(model: Classifier, config: TrainConfig) -> list[dict]:
    """Head at the base LR; a trainable backbone at LR x backbone_lr_mult (no decay on norms/biases)."""
    lr = config.resolved_lr
    decay = config.resolved_weight_decay
    groups = []
    for name, params, group_lr in (
        ("head", list(model.head_parameters()), lr),
        ("backbone", [p for p in model.backbone_parameters()], lr * config.backbone_lr_mult),
    ):
        params = [p for p in params if p.requires_grad]
        with_decay = [p for p in params if p.ndim > 1]
        without_decay = [p for p in params if p.ndim <= 1]
        if with_decay:
            groups.append({"name": name, "params": with_decay, "lr": group_lr, "weight_decay": decay})
        if without_decay:
            groups.append({"name": f"{name}_no_decay", "params": without_decay, "lr": group_lr, "weight_decay": 0.0})
    return groups
