"""Evaluated images the run trained on: `tlearn eval RUN --data D` on the run's own plain folder
scores every image, training images included, and reports a figure the model never earned on
new images. Count them, and say which split gives an honest figure."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import BUILTIN_DATASETS, DataConfig
from ..data import ArraySamples, FileSamples, Samples, resolve_split
from ..errors import UserError

logger = logging.getLogger(__name__)


def count_training_images(trained_on: DataConfig, seed: int, evaluated: DataConfig, split: str,
                          samples: Samples) -> int:
    """How many of `samples` (the `split` of `evaluated`) are in the training split of a run trained
    on `trained_on`; warns when any are. 0 when they cannot overlap or the run's data is gone."""
    same_source = _same_source(trained_on.source, evaluated.source)
    if same_source and split in ("val", "test") and trained_on.labels == evaluated.labels:
        return 0  # the resolver splits the run's own data as the run did: held out by construction
    if not (same_source or _nested(trained_on.source, evaluated.source)):
        return 0
    try:
        training = resolve_split(trained_on, "train", seed).samples
    except UserError:  # the run's data moved or changed: nothing to compare with
        return 0
    seen = set(_identities(training))
    count = sum(identity in seen for identity in _identities(samples))
    if count:
        advice = ("--split val evaluates only the images the run held out" if same_source
                  else "evaluate images the run did not train on")
        logger.warning(f"{count} of {len(samples)} evaluated images are in the run's training split: the figures "
                       f"overstate accuracy on new images; {advice}")
    return count


def _identities(samples: Samples) -> list:
    if isinstance(samples, FileSamples):
        return [os.path.realpath(path) for path in samples.paths]
    if isinstance(samples, ArraySamples):
        return [(samples.name, index) for index in samples.indices]
    return []


def _same_source(a: str, b: str) -> bool:
    if a in BUILTIN_DATASETS or b in BUILTIN_DATASETS:
        return a == b
    return Path(a).resolve() == Path(b).resolve()


def _nested(a: str, b: str) -> bool:
    """One folder inside the other (the run trained on photos/, eval reads photos/cat or the reverse)."""
    if a in BUILTIN_DATASETS or b in BUILTIN_DATASETS:
        return False
    a_path, b_path = Path(a).resolve(), Path(b).resolve()
    return a_path.is_relative_to(b_path) or b_path.is_relative_to(a_path)
