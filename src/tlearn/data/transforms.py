"""Image transforms built from the weights' preprocessing, never hard-coded."""
from __future__ import annotations

import torch
from torchvision import transforms as T

from ..preprocessing import Preprocessing

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def interpolation_mode(name: str) -> T.InterpolationMode:
    return _INTERPOLATION.get(name, T.InterpolationMode.BILINEAR)


def eval_transform(prep: Preprocessing) -> T.Compose:
    """Resize the shorter side, center-crop, normalise: works for any size and aspect ratio."""
    return T.Compose([
        T.Resize(prep.resize_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        T.CenterCrop(prep.crop_size),
        T.ToTensor(),
        T.Normalize(prep.mean, prep.std),
    ])


def eval_transform_uint8(prep: Preprocessing) -> T.Compose:
    """`eval_transform` without the float conversion: workers ship 4x fewer bytes, and
    `normalize_batch` scales and normalises the whole batch in one vectorised step."""
    return T.Compose([
        T.Resize(prep.resize_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        T.CenterCrop(prep.crop_size),
        T.PILToTensor(),
    ])


def normalize_batch(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised, equal to ToTensor() + Normalize() per image."""
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std)
    return torch.addcmul(-mean / std, images.float(), scale)


def train_transform(prep: Preprocessing, augment: str) -> T.Compose:
    """`default`: random-resized-crop + horizontal flip (torchvision's reference recipe)."""
    if augment == "none":
        return eval_transform(prep)
    return T.Compose([
        T.RandomResizedCrop(prep.crop_size, interpolation=interpolation_mode(prep.interpolation), antialias=True),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(prep.mean, prep.std),
    ])
