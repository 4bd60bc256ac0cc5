"""Mixup and CutMix (`--mixup`, `--cutmix`): mix each training batch, learn soft targets.

timm's semantics (`timm.data.Mixup`, mode "batch"): one lambda ~ Beta(alpha, alpha) per batch;
every image is mixed with the image at the mirrored position (the batch flipped); with both
alphas set, each batch is cutmix with probability 0.5 (timm's switch_prob), else mixup. CutMix
pastes a box of area 1 - lambda, clipped at the borders, and lambda is then corrected to the
box's real area (timm's correct_lam). The targets are timm's own (`mixup_target`): one-hot rows
with `--label-smoothing` inside them, mixed lambda : 1 - lambda; multi-label rows are the mixed
multi-hot rows, for binary cross-entropy.

timm's class itself is not used because it draws from numpy's global RNG and asserts an even
batch: here every draw comes from torch's seeded global RNG, the one the transforms draw from,
so `--deterministic` and `--resume` (state.py commits that state every epoch) repeat a run
bit for bit, and an odd last batch is mixed too (its middle image meets itself, lambda unchanged).

The training accuracy of a mixed batch counts each image against the argmax of its soft target
(the larger share); multi-label F1 against the soft targets above 0.5.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from timm.data.mixup import mixup_target

from ...config import RunConfig
from ...task import Task
from .._events import Callback

if TYPE_CHECKING:
    from .._loop import Loop

logger = logging.getLogger(__name__)

SWITCH_PROBABILITY = 0.5  # timm's switch_prob: cutmix instead of mixup, when both are on


class BatchMixer:
    """Mixes a batch in place and returns (inputs, soft targets, targets the accuracy counts)."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int, *,
                 label_smoothing: float = 0.0, multi_label: bool = False):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("BatchMixer needs a mixup or a cutmix alpha above 0")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.num_classes, self.label_smoothing, self.multi_label = num_classes, label_smoothing, multi_label

    def draw(self) -> tuple[float, bool]:
        """(lambda, use cutmix) for the next batch."""
        use_cutmix = self.cutmix_alpha > 0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(torch.rand(()) < SWITCH_PROBABILITY)
        alpha = torch.tensor(self.cutmix_alpha if use_cutmix else self.mixup_alpha, dtype=torch.float64)
        return float(torch.distributions.Beta(alpha, alpha).sample()), use_cutmix

    def mix_images(self, images: torch.Tensor, lam: float, use_cutmix: bool) -> float:
        """Mix `images` (N, C, H, W) in place; returns the lambda the targets get."""
        if use_cutmix:
            top, bottom, left, right = cutmix_box(images.shape[-2], images.shape[-1], lam)
            images[:, :, top:bottom, left:right] = images.flip(0)[:, :, top:bottom, left:right]
            return 1.0 - (bottom - top) * (right - left) / float(images.shape[-2] * images.shape[-1])
        partner = images.flip(0).mul_(1.0 - lam)
        images.mul_(lam).add_(partner)
        return lam

    def soft_targets(self, targets: torch.Tensor, lam: float) -> torch.Tensor:
        if self.multi_label:  # multi-label runs have no label smoothing (Task.check_config)
            rows = targets.float()
            return rows * lam + rows.flip(0) * (1.0 - lam)
        return mixup_target(targets, self.num_classes, lam, self.label_smoothing)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                            torch.Tensor]:
        lam, use_cutmix = self.draw()
        lam = self.mix_images(images, lam, use_cutmix)
        soft = self.soft_targets(targets, lam)
        return images, soft, soft if self.multi_label else soft.argmax(dim=1)


def cutmix_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """(top, bottom, left, right): timm's `rand_bbox`, a box of sides sqrt(1 - lam) x the image's
    around a uniformly drawn centre, clipped at the borders."""
    ratio = (1.0 - lam) ** 0.5
    cut_height, cut_width = int(height * ratio), int(width * ratio)
    centre_y, centre_x = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(centre_y - cut_height // 2, 0), min(centre_y + (cut_height + 1) // 2, height)
    left, right = max(centre_x - cut_width // 2, 0), min(centre_x + (cut_width + 1) // 2, width)
    return top, bottom, left, right


class Mixing(Callback):
    """Mixes every training batch on the device; the loss learns the soft targets, the training
    figure counts the targets the mixer says."""

    def __init__(self, mixer: BatchMixer) -> None:
        self.mixer = mixer

    def before_batch(self, loop: Loop) -> None:
        loop.inputs, loop.targets, loop.counted = self.mixer(loop.inputs, loop.targets)


def make_mixer(config: RunConfig, task: Task, num_classes: int) -> BatchMixer | None:
    """The run's mixer, or None when --mixup and --cutmix are both 0."""
    dc = config.data
    if dc.mixup <= 0 and dc.cutmix <= 0:
        return None
    return BatchMixer(dc.mixup, dc.cutmix, num_classes, label_smoothing=config.train.label_smoothing,
                      multi_label=task.multi_label)


def ignored_image_flags(config: RunConfig) -> list[str]:
    """The image-only flags (augment.py, this module) that are set: a head on cached features ignores them."""
    dc = config.data
    flags = {"--mixup": dc.mixup, "--cutmix": dc.cutmix, "--random-erasing": dc.random_erasing}
    return [f"{flag} {value:g}" for flag, value in flags.items() if value > 0]


def warn_if_ignored(config: RunConfig, stage_name: str) -> None:
    """One warning line when a stage on cached features meets flags that only act on images."""
    flags = ignored_image_flags(config)
    if flags:
        logger.warning(f"{stage_name} trains the head on cached features: {', '.join(flags)} ignored there "
                       "(they act on stages that train on images; --probe-augment or --unfreeze-last makes "
                       "the probe one)")
