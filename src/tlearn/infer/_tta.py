"""Test-time augmentation: several views of each image, their logits averaged.

`--tta`: the image and its horizontal flip. `--tta-crops 5`: torchvision's FiveCrop (four
corners and the centre) of the resized image at the crop size, instead of the centre crop
alone; with `--tta` each crop and its flip, 10 views. Every view goes through the same
preprocessing and the same engine as plain evaluation (inference.classify), one batch of
images at a time with all their views; the logits are averaged, then softmax (sigmoid with the
run's thresholds for multi-label runs), as timm's and fastai's TTA average the model's outputs.

A run whose preprocessing resizes whole images (small images, small_images.py) has no margin to
crop five views from: its image is resized to crop_size / 0.875 (timm's default crop ratio)
for the five crops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ..data import Pipeline, Preprocessing, Presize, interpolation_mode
from ..errors import ConfigError

CROP_CHOICES = (1, 5)
WHOLE_IMAGE_CROP_RATIO = 0.875  # timm's DEFAULT_CROP_PCT: the margin five crops need


@dataclass(frozen=True)
class Views:
    """Which views of an image are averaged."""

    flip: bool = False
    crops: int = 1  # 1: the centre crop; 5: FiveCrop

    def __post_init__(self) -> None:
        if self.crops not in CROP_CHOICES:
            raise ConfigError(f"--tta-crops must be 1 or 5, got {self.crops}")

    @property
    def count(self) -> int:
        return self.crops * (2 if self.flip else 1)

    @property
    def active(self) -> bool:
        return self.count > 1

    def plain_index(self, prep: Preprocessing) -> int | None:
        """The view that is exactly plain evaluation's image, or None when none is."""
        if self.crops == 1:
            return 0
        if prep.whole_image:  # the five crops come from a larger resize
            return None
        return 4 * (2 if self.flip else 1)  # FiveCrop's last crop is the centre crop


def views_for(tta: bool, tta_crops: int) -> Views | None:
    """The views `--tta` / `--tta-crops` ask for; None when that is the plain image alone."""
    views = Views(bool(tta), int(tta_crops))
    return views if views.active else None


class MultiView:
    """uint8 image (C, H, W) -> its views (V, C, crop, crop), in `Views` order."""

    def __init__(self, prep: Preprocessing, views: Views):
        self.views, self.crop_size = views, prep.crop_size
        interpolation = interpolation_mode(prep.interpolation)
        if prep.whole_image:
            side = prep.crop_size if views.crops == 1 else round(prep.crop_size / WHOLE_IMAGE_CROP_RATIO)
            self.resize = T.Resize((side, side), interpolation=interpolation, antialias=True)
        else:
            self.resize = T.Resize(prep.resize_size, interpolation=interpolation, antialias=True)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = self.resize(image)
        crops = [TF.center_crop(image, [self.crop_size, self.crop_size])] if self.views.crops == 1 else \
            list(TF.five_crop(image, [self.crop_size, self.crop_size]))
        if self.views.flip:
            crops = [view for crop in crops for view in (crop, TF.horizontal_flip(crop))]
        return torch.stack(crops)


def decode_size(prep: Preprocessing, views: Views) -> int:
    if prep.whole_image and views.crops > 1:
        return round(prep.crop_size / WHOLE_IMAGE_CROP_RATIO)
    return prep.crop_size if prep.whole_image else prep.resize_size


def views_transform_uint8(prep: Preprocessing, views: Views) -> Pipeline:
    """Decoded image -> uint8 views: what the onnxruntime engine takes (it normalises itself)."""
    presize = Presize(prep) if not (prep.whole_image and views.crops > 1) else _identity
    return Pipeline([T.PILToTensor(), presize, MultiView(prep, views)], decode_size(prep, views))


def views_transform(prep: Preprocessing, views: Views) -> Pipeline:
    """Decoded image -> normalised float views, with plain evaluation's arithmetic (eager)."""
    to_float = [T.ToDtype(torch.float32, scale=True), T.Normalize(prep.mean, prep.std)]  # as eval_transform
    return Pipeline([*views_transform_uint8(prep, views).transforms, *to_float], decode_size(prep, views))


def average_views(logits: torch.Tensor, count: int) -> torch.Tensor:
    """(N x V, K) logits of consecutive views -> (N, K): their mean."""
    return logits.reshape(-1, count, logits.shape[-1]).mean(dim=1)


def _identity(image: torch.Tensor) -> torch.Tensor:
    return image
