"""`--ema-decay`: an exponential moving average of the weights while a stage runs the optimiser.

The average is timm's `ModelEmaV3` with its warm-up (`use_warmup=True`, gamma 1, power 2/3): the
k-th update averages with decay min(D, 1 - k^(-2/3)), so the first update copies the weights and
early, poor weights fade out quickly instead of lingering for ~1/(1-D) steps. The count of updates
is kept here, beside the averaged weights, so a resumed stage goes on with the same decays.

The live weights keep training; validation, the best checkpoint and every file that eval, predict
and export read hold the averaged ones. An L-BFGS head solve has no steps to average.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._events import Callback

if TYPE_CHECKING:
    from .._loop import Loop

logger = logging.getLogger(__name__)

WARMUP_GAMMA, WARMUP_POWER = 1.0, 2 / 3  # timm's defaults for ModelEmaV3's warm-up


class WeightAverage:
    """The moving average of `source` (the module a stage trains: the classifier or its head)."""

    def __init__(self, source: nn.Module, decay: float, prefix: str = "") -> None:
        from timm.utils import ModelEmaV3

        self.source = source
        self.prefix = prefix  # where `source` sits in the classifier's state dict ("head." or "")
        self.average = ModelEmaV3(source, decay=decay, use_warmup=True, warmup_gamma=WARMUP_GAMMA,
                                  warmup_power=WARMUP_POWER)
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        """The averaged copy of `source` (eval mode): what validation runs."""
        return self.average.module

    def update(self) -> None:
        """After each optimiser step; timm's train.py counts the updates the same way (from 1)."""
        self.updates += 1
        self.average.update(self.source, step=self.updates)

    def decay(self) -> float:
        """The decay of the last update (0.0 before the second one)."""
        return self.average.get_decay(self.updates)

    def copy_to_source(self) -> None:
        """The stage is over: the next stage (and the caller's model) go on from the averaged weights,
        the ones that were validated and saved."""
        with torch.no_grad():
            self.source.load_state_dict(self.average.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.average.module.state_dict()), "updates": self.updates, "prefix": self.prefix}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.average.module.load_state_dict(saved["weights"])
        self.updates = int(saved["updates"])


class WeightAveraging(Callback):
    """The EMA on the loop: updated after every optimiser step, validated in place of the live
    weights, and handed to the live weights when the stage ends (before its last commit)."""

    def __init__(self, average: WeightAverage) -> None:
        self.average = average

    def before_fit(self, loop: Loop) -> None:
        loop.validated = self.average.module

    def after_step(self, loop: Loop) -> None:
        self.average.update()

    def after_validate(self, loop: Loop) -> None:
        if loop.stop or loop.last_epoch:
            self.average.copy_to_source()


def start_weight_average(model: nn.Module, source: nn.Module, decay: float | None) -> WeightAverage | None:
    """A stage's average of `source` (part of `model`), or None without --ema-decay; logs that it is on."""
    if decay is None:
        return None
    prefix = next(name for name, module in model.named_modules() if module is source)
    logger.info(f"  EMA of the weights on: decay {decay:g} after a warm-up (update k: min({decay:g}, "
                f"1 - k^-{WARMUP_POWER:.3g})); validation and the saved model use the averaged weights")
    return WeightAverage(source, decay, f"{prefix}." if prefix else "")
