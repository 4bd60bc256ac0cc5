"""Image transforms built from the weights' preprocessing, never hard-coded.

Every pipeline turns the decoded PIL image into a uint8 tensor first and resizes that with
torchvision's antialiased tensor resize: 2.5-3x faster than PIL's resize on small and
medium images (32 px -> 224: 0.2 vs 0.5-0.7 ms; 500x375 -> 256 bicubic: 1.0 vs 3.3 ms),
and within 1-2 grey levels of it. Training, evaluation, prediction and the feature cache
all resize the same way, so cached features equal the ones evaluation computes.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from ._augment import erasing_transforms, policy_transforms
from .preprocessing import Preprocessing

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> T.InterpolationMode:
    return _INTERPOLATION.get(name, T.InterpolationMode.BILINEAR)


def _to_float(prep: Preprocessing) -> list:
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(prep.mean, prep.std)]


class Pipeline(T.Compose):
    """A transform that also says how large the decoder must make the image (`decode_size`):
    the loader asks a JPEG for a DCT-scaled draft no smaller than that (see data/images.py)."""

    def __init__(self, transforms: list, decode_size: int):
        super().__init__(transforms)
        self.decode_size = decode_size


class Presize:
    """Shrink a uint8 image to the largest size any pipeline of `prep` needs, never enlarge it.

    Shorter side to `resize_size` (or both sides to `crop_size` for whole images) when it is
    larger, with the pipelines' own interpolation: the evaluation resize that follows is then a
    no-op, so presizing changes no evaluation pixel, and training's random-resized-crop samples
    the presized image (fastai's presizing) at a fraction of the cost of the full photo. It is
    also what the decoded-image cache stores (data/image_cache.py), so cached and uncached
    pipelines give the same pixels.
    """

    def __init__(self, prep: Preprocessing):
        self.whole_image, self.resize_size, self.crop_size = prep.whole_image, prep.resize_size, prep.crop_size
        self.interpolation = interpolation_mode(prep.interpolation)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if self.whole_image:
            if height <= self.crop_size and width <= self.crop_size:
                return image
            return TF.resize(image, [self.crop_size, self.crop_size], self.interpolation, antialias=True)
        if min(height, width) <= self.resize_size:
            return image
        return TF.resize(image, self.resize_size, self.interpolation, antialias=True)


def decode_size(prep: Preprocessing) -> int:
    """The smallest square a decoded image must cover for `prep` (before presizing)."""
    return prep.crop_size if prep.whole_image else prep.resize_size


def presize_transform(prep: Preprocessing) -> Pipeline:
    """Decoded image -> presized uint8 tensor: what the decoded-image cache stores."""
    return Pipeline([T.PILToTensor(), Presize(prep)], decode_size(prep))


def eval_transform(prep: Preprocessing) -> Pipeline:
    """Resize the shorter side, center-crop, normalise (or resize the whole image to the input
    size, for images smaller than it): works for any size and aspect ratio."""
    return Pipeline([*eval_transform_uint8(prep).transforms, *_to_float(prep)], decode_size(prep))


def eval_transform_uint8(prep: Preprocessing) -> Pipeline:
    """`eval_transform` without the float conversion, for feature extraction: batches stay 4x
    smaller, and the engine normalises each whole batch itself (`normalize_batch`)."""
    interpolation = interpolation_mode(prep.interpolation)
    if prep.whole_image:
        resize = [T.Resize((prep.crop_size, prep.crop_size), interpolation=interpolation, antialias=True)]
    else:
        resize = [T.Resize(prep.resize_size, interpolation=interpolation, antialias=True),
                  T.CenterCrop(prep.crop_size)]
    return Pipeline([T.PILToTensor(), Presize(prep), *resize], decode_size(prep))


def normalize_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised, equal to ToTensor() + Normalize() per image."""
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    return torch.addcmul(-mean / std, images.float(), scale)


def train_transform(prep: Preprocessing, augment: str, random_erasing: float = 0.0) -> Pipeline:
    """`default`: random-resized-crop + horizontal flip (torchvision's reference recipe), of the
    presized image; `randaugment` | `trivialaugment` | `autoaugment` add that policy on the uint8
    crop (data/augment.py). `random_erasing`: erase a rectangle of the normalised image with this
    probability, whatever `augment` is (an explicit flag)."""
    if augment == "none":
        return Pipeline([*eval_transform(prep).transforms, *erasing_transforms(random_erasing)], decode_size(prep))
    return Pipeline([
        T.PILToTensor(),
        Presize(prep),
        T.RandomResizedCrop(prep.crop_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        T.RandomHorizontalFlip(),
        *policy_transforms(augment),
        *_to_float(prep),
        *erasing_transforms(random_erasing),
    ], decode_size(prep))
