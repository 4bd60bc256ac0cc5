"""How unequal the classes are: counts per class, the largest / smallest ratio, and the one warning
a run or an evaluation gives when it reaches WARN_RATIO (train/balance.py acts on it)."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

WARN_RATIO = 10.0  # largest class / smallest class from which a run or an eval warns


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    return torch.bincount(torch.as_tensor(list(labels), dtype=torch.int64), minlength=num_classes).tolist()


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Images of the largest class / images of the smallest present one (1.0 when balanced)."""
    present = [c for c in counts if c > 0]
    return max(present) / min(present) if present else 1.0


def warn_if_imbalanced(counts: Sequence[int], class_names: Sequence[str], where: str) -> bool:
    """One warning when the largest class has WARN_RATIO x the images of the smallest; True if so."""
    ratio = imbalance_ratio(counts)
    if ratio < WARN_RATIO:
        return False
    largest = max(range(len(counts)), key=lambda i: counts[i])
    smallest = min((i for i in range(len(counts)) if counts[i] > 0), key=lambda i: counts[i])
    logger.warning(f"imbalanced classes in {where}: {class_names[largest]} has {counts[largest]} images, "
                   f"{class_names[smallest]} {counts[smallest]} ({ratio:.0f}x); top-1 favours the large classes, "
                   f"see balanced accuracy and macro-F1 (and --balance logit-adjust | reweight | resample)")
    return True
