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

from ..preprocessing import Preprocessing

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> T.InterpolationMode:
    return _INTERPOLATION.get(name, T.InterpolationMode.BILINEAR)


def _to_float(prep: Preprocessing) -> list:
    return [T.ToDtype(torch.float32, scale=True), T.Normalize(prep.mean, prep.std)]


def eval_transform(prep: Preprocessing) -> T.Compose:
    """Resize the shorter side, center-crop, normalise (or resize the whole image to the input
    size, for images smaller than it): works for any size and aspect ratio."""
    return T.Compose([*eval_transform_uint8(prep).transforms, *_to_float(prep)])


def eval_transform_uint8(prep: Preprocessing) -> T.Compose:
    """`eval_transform` without the float conversion, for feature extraction: batches stay 4x
    smaller, and the engine normalises each whole batch itself (`normalize_batch`)."""
    interpolation = interpolation_mode(prep.interpolation)
    if prep.whole_image:
        return T.Compose([T.PILToTensor(),
                          T.Resize((prep.crop_size, prep.crop_size), interpolation=interpolation, antialias=True)])
    return T.Compose([
        T.PILToTensor(),
        T.Resize(prep.resize_size, interpolation=interpolation, antialias=True),
        T.CenterCrop(prep.crop_size),
    ])


def normalize_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised, equal to ToTensor() + Normalize() per image."""
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    return torch.addcmul(-mean / std, images.float(), scale)


def train_transform(prep: Preprocessing, augment: str) -> T.Compose:
    """`default`: random-resized-crop + horizontal flip (torchvision's reference recipe)."""
    if augment == "none":
        return eval_transform(prep)
    return T.Compose([
        T.PILToTensor(),
        T.RandomResizedCrop(prep.crop_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        T.RandomHorizontalFlip(),
        *_to_float(prep),
    ])
