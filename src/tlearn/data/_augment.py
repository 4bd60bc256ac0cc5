"""Training augmentation beyond random-resized-crop + flip: automatic policies, random erasing.

torchvision's reference recipe (`references/classification/presets.py`): crop and flip, then
the policy on the uint8 image, then float conversion and normalisation, then random erasing.
Every draw comes from torch's global RNG (DataLoader workers seed theirs from the loader), so
`--deterministic` runs and resumed runs repeat them.
"""
from __future__ import annotations

from torchvision.transforms import v2 as T

# --augment choices: default = crop + flip only; none = the evaluation pipeline.
POLICIES = ("randaugment", "trivialaugment", "autoaugment")


def policy_transforms(augment: str) -> list:
    """The automatic policy of `augment` (empty for default). Bilinear, as torchvision's reference
    recipe uses (its --interpolation default): tensor rotations and shears have no bicubic."""
    bilinear = T.InterpolationMode.BILINEAR
    if augment == "randaugment":
        return [T.RandAugment(interpolation=bilinear)]  # 2 ops, magnitude 9 (the paper's ImageNet setting)
    if augment == "trivialaugment":
        return [T.TrivialAugmentWide(interpolation=bilinear)]
    if augment == "autoaugment":
        return [T.AutoAugment(T.AutoAugmentPolicy.IMAGENET, interpolation=bilinear)]
    return []


def erasing_transforms(probability: float) -> list:
    """Random erasing of the normalised image with `probability` (timm's --reprob). The rectangle
    is filled with per-pixel normal noise, timm's default --remode pixel; area 2-33% of the image,
    aspect 0.3-3.3, the defaults of both timm and torchvision."""
    return [T.RandomErasing(p=probability, value="random")] if probability > 0 else []
