"""Self-training on images without labels: `tlearn train --unlabeled DIR`.

Before the first stage, the probe of features/few_labels.py fits the labelled images' backbone
features (from the feature cache), pseudo-labels the most confident `--pseudo-share` of each
*predicted* class of the unlabelled images (a share per class, not a probability threshold: rare
classes are not drowned and the set does not snowball), refits, `--pseudo-rounds` times
(features.self_train). Every stage then trains on the labels plus those pseudo-labels, each
pseudo-label weighted `--pseudo-weight` against a label's 1 in the loss.

How the weight reaches the loss: the training loader's label of a pseudo-labelled image is its
class + num_classes (the validation loader's labels are untouched). `PseudoTargets`, the first
callback of each batch, restores the class and remembers which rows were pseudo-labelled, and
`PseudoWeightedLoss` weights those rows; the L-BFGS head solve gets the same weights per row.

The chosen pseudo-labels are written to the run folder (pseudo_labels.json) and a resumed run
reads them back: its model has moved on, and pseudo-labels drawn from it would differ.
How good they are: the same self-training with the validation images as the unlabelled ones,
its pseudo-labels compared with their true labels (summary.json's "pseudo_labels").
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import LR_FIND, RunConfig
from ..data import NO_LABEL, DatasetSplits, FileSamples, Samples, scan_unlabeled
from ..errors import ConfigError, DataError
from ..features import FeatureExtractor, FeatureScaler, self_train
from ..files import read_json, write_json
from ..models import Classifier
from ..runtime import Runtime
from ..task import Task
from ._events import Callback

logger = logging.getLogger(__name__)

PSEUDO_FILE = "pseudo_labels.json"  # in the run folder (run_folder/guard.py's RUN_FILES)


def check_pseudo_config(config: RunConfig) -> None:
    """What --unlabeled cannot do, refused in one line before anything trains."""
    tc, dc = config.train, config.data
    if not tc.pseudo_unlabeled:
        return
    if Task.of(config).multi_label:
        raise ConfigError("--unlabeled is single-label: a labels table with --label-delim is multi-label")
    if config.distill is not None:
        raise ConfigError("train's --unlabeled (pseudo-labels) and distillation do not combine")
    if tc.pseudo_rounds < 1:
        raise ConfigError(f"--pseudo-rounds must be at least 1, got {tc.pseudo_rounds}")
    if not 0.0 < tc.pseudo_share <= 1.0:
        raise ConfigError(f"--pseudo-share must be above 0 and at most 1, got {tc.pseudo_share}")
    if not tc.pseudo_weight > 0.0:
        raise ConfigError(f"--pseudo-weight must be above 0, got {tc.pseudo_weight}")
    if dc.mixup > 0 or dc.cutmix > 0:
        raise ConfigError("--unlabeled with --mixup or --cutmix: a mixed pair of a label and a pseudo-label has no "
                          "one weight; drop one of them")
    if tc.balance == "resample":
        raise ConfigError("--unlabeled with --balance resample: use --balance reweight (pseudo-labels count in "
                          "the loss, not in the draw)")
    if tc.lr == LR_FIND:
        raise ConfigError("--lr find sweeps the loss on the labels alone; give --unlabeled runs a number for --lr")


def check_pseudo_labels(config: RunConfig, data: DatasetSplits) -> None:
    """A train --unlabeled run's cheap checks, before its folder is claimed: the settings, a folder data
    set, and a folder with images in it (scanned by name and header, nothing decoded)."""
    if not config.train.pseudo_unlabeled:
        return
    check_pseudo_config(config)
    if not isinstance(data.train, FileSamples):
        raise ConfigError("--unlabeled needs --data FOLDER (image files), not a built-in data set")
    scan_unlabeled(config.train.pseudo_unlabeled, config.data.strict_images)


@dataclass
class PseudoLabels:
    """The pseudo-labelled images of a run, their classes and weight, and the summary's entry."""

    samples: FileSamples  # the pseudo-labelled images, labelled NO_LABEL (their feature cache entry)
    labels: list[int]
    num_classes: int
    weight: float
    summary: dict = field(default_factory=dict)

    def train_samples(self, labelled: Samples) -> Samples:
        """The labelled images, then the pseudo-labelled ones, their labels class + num_classes."""
        return JoinedSamples(labelled, self.samples, self.encoded_labels(labelled.labels))

    def encoded_labels(self, labels: list[int]) -> list[int]:
        return list(labels) + [label + self.num_classes for label in self.labels]

    def decode(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(classes, whether each row is pseudo-labelled) of encoded training labels."""
        pseudo = targets >= self.num_classes
        return torch.where(pseudo, targets - self.num_classes, targets), pseudo

    def row_weights(self, pseudo: torch.Tensor) -> torch.Tensor:
        return torch.where(pseudo, torch.tensor(self.weight), torch.tensor(1.0))

    def save(self, run_dir: Path, folder: str) -> None:
        images = [[os.path.relpath(path, folder), label] for path, label in zip(self.samples.paths, self.labels)]
        write_json(run_dir / PSEUDO_FILE, {"summary": self.summary, "images": images})


def start_pseudo_labels(config: RunConfig, data: DatasetSplits, model: Classifier, runtime: Runtime,
                        cache_dir: Path | None, run_dir: Path | None, resumed: bool) -> PseudoLabels:
    """A resumed run's pseudo-labels from its folder, else chosen now by self-training."""
    check_pseudo_config(config)
    if not isinstance(data.train, FileSamples):
        raise ConfigError("--unlabeled needs --data FOLDER (image files), not a built-in data set")
    tc, num_classes = config.train, len(data.class_names)
    if resumed and run_dir is not None and (run_dir / PSEUDO_FILE).is_file():
        stored = read_json(run_dir / PSEUDO_FILE)
        paths = [os.path.join(tc.pseudo_unlabeled, path) for path, _ in stored["images"]]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise DataError(f"--unlabeled {tc.pseudo_unlabeled} changed since the run began: {missing[0]} is gone")
        labels = [int(label) for _, label in stored["images"]]
        return PseudoLabels(FileSamples(paths, [NO_LABEL] * len(paths)), labels, num_classes, tc.pseudo_weight,
                            stored["summary"])
    return _choose(config, data, model, runtime, cache_dir)


def _choose(config: RunConfig, data: DatasetSplits, model: Classifier, runtime: Runtime,
            cache_dir: Path | None) -> PseudoLabels:
    tc, dc, names = config.train, config.data, list(data.class_names)
    unlabeled, skipped = scan_unlabeled(tc.pseudo_unlabeled, dc.strict_images)
    taken = {os.path.abspath(path) for split in (data.train, data.val) for path in getattr(split, "paths", [])}
    kept = [path for path in unlabeled.paths if os.path.abspath(path) not in taken]  # a labelled image stays one
    if not kept:
        raise DataError(f"--unlabeled {tc.pseudo_unlabeled} holds no image besides the labelled ones")
    already_labelled, unlabeled = len(unlabeled) - len(kept), FileSamples(kept, [NO_LABEL] * len(kept))
    extractor = FeatureExtractor(runtime, batch_size=max(dc.batch_size, 64), workers=dc.workers, cache_dir=cache_dir)
    train, pool, val = (extractor.cached(model, samples, description=f"{split} features").numpy()
                        for split, samples in (("train", data.train), ("unlabeled", unlabeled), ("val", data.val)))
    scale = FeatureScaler.of(np.concatenate([train, pool]))
    labels = np.asarray(data.train.labels, dtype=np.int64)
    settings = {"share": tc.pseudo_share, "rounds": tc.pseudo_rounds, "weight": tc.pseudo_weight}
    chosen = self_train(scale(train), labels, scale(pool), len(names), **settings)
    check = self_train(scale(train), labels, scale(val), len(names), **settings) if len(val) else None
    counts = np.bincount(chosen.pseudo_labels, minlength=len(names))
    summary = {"unlabeled_images": len(unlabeled), "skipped_files": len(skipped),
               "already_labelled": already_labelled,
               "used": int(len(chosen.pseudo_indices)), "per_class": dict(zip(names, counts.tolist())),
               **settings, "validation": _validation_check(check, np.asarray(data.val.labels), names)}
    logger.info(f"pseudo-labels: {summary['used']} of {len(unlabeled)} unlabeled images (share {tc.pseudo_share:g} "
                f"per predicted class, {tc.pseudo_rounds} rounds, weight {tc.pseudo_weight:g})"
                + (f"; on val {summary['validation']['accuracy']:.1%} right" if summary["validation"] else ""))
    paths = [unlabeled.paths[index] for index in chosen.pseudo_indices]
    return PseudoLabels(FileSamples(paths, [NO_LABEL] * len(paths)), chosen.pseudo_labels.tolist(), len(names),
                        tc.pseudo_weight, summary)


def _validation_check(check, truth: np.ndarray, names: list[str]) -> dict | None:
    """How many of the validation images the same self-training pseudo-labels, and how many rightly."""
    if check is None or not len(check.pseudo_indices):
        return None
    right = check.pseudo_labels == truth[check.pseudo_indices]
    per_class = {name: {"used": int((check.pseudo_labels == index).sum()),
                        "right": int(right[check.pseudo_labels == index].sum())} for index, name in enumerate(names)}
    return {"images": int(len(truth)), "pseudo_labelled": int(len(right)), "accuracy": float(right.mean()),
            "per_class": per_class}


class JoinedSamples(Samples):
    """Two sample sets one after the other, with labels of their own (the encoded training labels)."""

    def __init__(self, first: Samples, second: Samples, labels: list[int]) -> None:
        self.first, self.second, self.labels = first, second, labels
        self.decoded = first.decoded and second.decoded

    def _locate(self, index: int) -> tuple[Samples, int]:
        return (self.first, index) if index < len(self.first) else (self.second, index - len(self.first))

    def load(self, index: int, decode_size: int | None = None):
        samples, index = self._locate(index)
        return samples.load(index, decode_size)

    def image_size(self, index: int) -> tuple[int, int]:
        samples, index = self._locate(index)
        return samples.image_size(index)

    def describe(self, index: int) -> str:
        samples, index = self._locate(index)
        return samples.describe(index)

    def fingerprint(self) -> str:
        return f"{self.first.fingerprint()}+{self.second.fingerprint()}+{hash(tuple(self.labels))}"

    def subset(self, indices: list[int]) -> Samples:
        raise NotImplementedError("a training split with pseudo-labels is not subset")


class PseudoTargets(Callback):
    """Each training batch's labels as classes, and which rows are pseudo-labels (`pseudo`)."""

    def __init__(self, pseudo: PseudoLabels) -> None:
        self.pseudo_labels, self.pseudo = pseudo, None

    def before_batch(self, loop) -> None:
        loop.targets, self.pseudo = self.pseudo_labels.decode(loop.targets)
        loop.counted = loop.targets


class PseudoWeightedLoss(nn.Module):
    """The run's loss, each pseudo-labelled row counting `weight` of a labelled one: the mean of the
    labelled rows' loss and of the pseudo-labelled rows' loss, weighted by their counts x weights."""

    def __init__(self, loss: nn.Module, source: PseudoTargets, weight: float) -> None:
        super().__init__()
        self.loss, self.source, self.weight = loss, source, weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pseudo = self.source.pseudo
        if pseudo is None or not bool(pseudo.any()):
            return self.loss(logits, targets)
        pseudo = pseudo.to(logits.device)
        labelled = ~pseudo
        total = self.weight * self.loss(logits[pseudo], targets[pseudo]) * pseudo.sum()
        if bool(labelled.any()):
            total = total + self.loss(logits[labelled], targets[labelled]) * labelled.sum()
        return total / len(targets)
