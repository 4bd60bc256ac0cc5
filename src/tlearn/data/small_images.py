"""Preprocessing for datasets of images smaller than the network input (CIFAR, digits, icons).

`auto` (the default) looks at the training images once: when the typical one is smaller than
the input, the whole image is resized to the input size with bilinear interpolation
(`Preprocessing.for_small_images`) instead of the weights' resize + center-crop. The choice
is stored with the model's preprocessing, so eval, predict, export and the feature cache
all follow it. `weights` keeps the weights' recipe whatever the images.
"""
from __future__ import annotations

import logging
import statistics

from .preprocessing import Preprocessing
from .samples import Samples

logger = logging.getLogger(__name__)

PROBED_IMAGES = 64  # evenly spaced over the dataset: sizes read from file headers, cheap


def typical_shorter_side(samples: Samples, probes: int = PROBED_IMAGES) -> int:
    """Median shorter side (pixels) of up to `probes` evenly spaced samples."""
    count, taken = len(samples), min(probes, len(samples))
    indices = sorted({round(i * (count - 1) / max(taken - 1, 1)) for i in range(taken)})
    return int(statistics.median(min(samples.image_size(i)) for i in indices))


def adapt_preprocessing(prep: Preprocessing, samples: Samples, policy: str = "auto") -> Preprocessing:
    """The preprocessing to train with on `samples` (unchanged unless they are small)."""
    if policy == "weights" or len(samples) == 0:
        return prep
    small = prep.for_small_images()
    if small == prep:
        return prep
    side = typical_shorter_side(samples)
    if side >= prep.crop_size:
        return prep
    logger.info(f"images are smaller than the {prep.crop_size} px input (median shorter side {side} px): "
                f"resizing whole images ({small.interpolation}) instead of resize {prep.resize_size} + center crop "
                f"({prep.interpolation}); --small-images weights keeps the weights' recipe")
    return small
