"""One candidate of `tlearn select`: a backbone at one input size, timed on one batch, then scored by a
linear probe on its cached features (the L-BFGS head `tlearn train --strategy linear-probe` solves).

The timing batch goes through the same engine the extraction then uses (onnxruntime on CPU, its
graph exported first and cached, so the extraction reuses it), decoding included: its seconds per
image times the images still to extract is the candidate's estimate for the budget.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import DatasetSplits, Preprocessing, Samples, adapt_preprocessing, eval_transform_uint8, make_loader
from ..features import (
    FeatureExtractor,
    HeadObjective,
    cache_key,
    fit_linear_head_lbfgs,
    head_key,
    load_solved,
    make_backend,
    store_solved,
)
from ..models import Classifier
from ..runtime import Runtime
from ..training import label_tensor

logger = logging.getLogger(__name__)

EXTRACTION_BATCH = 64  # as a linear-probe stage extracts: max(--batch-size, 64) images per batch


@dataclass
class ProbeSettings:
    """How every candidate is extracted and probed (the same for all, so they compare)."""

    runtime: Runtime
    cache_dir: Path | None
    batch_size: int = EXTRACTION_BATCH
    workers: int | None = None
    small_images: str = "auto"


@dataclass
class ProbeResult:
    """One leaderboard row. `val_top1`/`val_balanced_acc` for single-label data, `val_map` for multi-label."""

    model: str
    image_size: int
    val_top1: float | None
    images_per_s: float  # feature extraction (decoding + backbone), see `speed_from`
    params: int  # the backbone's parameters (the head depends on the classes)
    seconds: float  # the whole candidate: preprocessing, engine set-up, timing batch, extraction, solve
    val_balanced_acc: float | None = None
    val_map: float | None = None
    speed_from: str = "extraction"  # "timing batch" when the features came from the cache
    estimate_seconds: float = 0.0
    feature_dim: int = 0
    l2: float = 0.0

    def score(self) -> tuple[float, float, float]:
        """What ranks the leaderboard: the task's metric, then balanced accuracy, then speed."""
        metric = self.val_map if self.val_map is not None else self.val_top1 or 0.0
        return metric, self.val_balanced_acc or 0.0, self.images_per_s


@dataclass
class PreparedCandidate:
    """A candidate after its timing batch: what it will cost, before any extraction."""

    model: Classifier
    image_size: int
    seconds_per_image: float
    images_to_extract: int
    started: float
    to_extract: tuple[str, ...]  # the splits whose features are not in the cache

    @property
    def estimate_seconds(self) -> float:
        return self.seconds_per_image * self.images_to_extract


def prepare_candidate(model: Classifier, base: Preprocessing, image_size: int | None, data: DatasetSplits,
                      settings: ProbeSettings) -> PreparedCandidate:
    """Set `model`'s preprocessing for `image_size` (None: the weights' size) and time one batch."""
    started = time.perf_counter()
    prep = base.with_image_size(image_size)
    model.info.preprocessing = adapt_preprocessing(prep, data.train, settings.small_images)
    extractor = _extractor(settings)
    pending = tuple(name for name in ("train", "val") if not _is_cached(extractor, model, getattr(data, name)))
    seconds_per_image = _time_batch(model, data.train, settings)
    images = sum(len(getattr(data, name)) for name in pending)
    return PreparedCandidate(model, model.info.preprocessing.crop_size, seconds_per_image, images, started, pending)


def probe_candidate(prepared: PreparedCandidate, data: DatasetSplits, settings: ProbeSettings) -> ProbeResult:
    """Extract (or load) the features, solve the L-BFGS head, and measure the candidate."""
    model = prepared.model
    extractor = _extractor(settings)
    extracted, extraction_seconds, features = 0, 0.0, {}
    if "val" in prepared.to_extract:  # the val graph (its fixed batch may differ) exported outside the timing
        _engine(model, data.val, settings)
    for split, samples in (("train", data.train), ("val", data.val)):
        fresh = split in prepared.to_extract
        began = time.perf_counter()
        features[split] = extractor.cached(model, samples, description=f"{split} features").flatten(1)
        if fresh:
            extracted, extraction_seconds = extracted + len(samples), extraction_seconds + time.perf_counter() - began
    train_y, val_y = label_tensor(data.train.labels), label_tensor(data.val.labels)
    multi = train_y.ndim == 2
    # A fresh linear head on the flattened features: the same solve for every architecture (SqueezeNet's
    # own head is a 1x1 convolution), and the probe keeps nothing but its scores.
    head = torch.nn.Linear(features["train"].shape[1], len(data.class_names))
    solved = _solve(head, features["train"], train_y, features["val"], val_y, multi, settings.cache_dir)
    if extracted:
        rate, speed_from = extracted / max(extraction_seconds, 1e-9), "extraction"
    else:
        rate, speed_from = 1 / max(prepared.seconds_per_image, 1e-9), "timing batch"
    return ProbeResult(
        model=model.info.name, image_size=prepared.image_size,
        val_top1=None if multi else solved.val_top1, images_per_s=rate,
        params=sum(p.numel() for p in model.backbone_parameters()),
        seconds=time.perf_counter() - prepared.started,
        val_balanced_acc=None if multi else solved.val_balanced_acc, val_map=solved.val_map if multi else None,
        speed_from=speed_from, estimate_seconds=prepared.estimate_seconds,
        feature_dim=features["train"].shape[1], l2=solved.l2)


def _extractor(settings: ProbeSettings) -> FeatureExtractor:
    return FeatureExtractor(settings.runtime, batch_size=max(settings.batch_size, EXTRACTION_BATCH),
                            workers=settings.workers, cache_dir=settings.cache_dir)


def _is_cached(extractor: FeatureExtractor, model: Classifier, samples: Samples) -> bool:
    """Whether `extractor.cached` will load these features instead of computing them."""
    if extractor.cache_dir is None:
        return False
    amp = extractor.runtime.amp_dtype
    precision = str(amp).replace("torch.", "") if amp else "fp32"  # as FeatureExtractor.cached keys them
    key = cache_key(model, model.info.preprocessing, samples, precision)
    return (Path(extractor.cache_dir) / "features" / f"{key}.npy").is_file()


def _time_batch(model: Classifier, samples: Samples, settings: ProbeSettings) -> float:
    """Seconds per image, decoding + forward, of one batch through the extraction's engine.

    The engine is built as the extraction builds it (the same fixed-batch ONNX graph, exported once
    and cached), and run once untimed first: that call pays the session start and the parity check."""
    backend, batch = _engine(model, samples, settings)
    subset = samples.subset(list(range(batch)))
    transform = eval_transform_uint8(model.info.preprocessing)

    def decode() -> torch.Tensor:
        loader = make_loader(subset, transform, batch_size=batch, shuffle=False, workers=0,
                             device=settings.runtime.device)
        return next(iter(loader))[0]

    with torch.inference_mode():
        backend(decode())
        began = time.perf_counter()
        backend(decode())
    return (time.perf_counter() - began) / batch


def _engine(model: Classifier, samples: Samples, settings: ProbeSettings):
    """(backend, its batch): the engine FeatureExtractor builds for `samples` (the same cached graph)."""
    batch = max(1, min(max(settings.batch_size, EXTRACTION_BATCH), len(samples)))
    model.eval()
    return make_backend(model, model.info.preprocessing, settings.runtime, settings.cache_dir, batch_size=batch), batch


def _solve(head: torch.nn.Linear, train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor,
           val_y: torch.Tensor, multi_label: bool, cache_dir: Path | None):
    """The linear-probe stage's head: the same objective and cache as training._solve_head (unbalanced)."""
    objective = HeadObjective(select="map" if multi_label else "top1", multi_label=multi_label)
    key = head_key(train_x, train_y, val_x, val_y, objective)
    solved = load_solved(head, cache_dir, key)
    if solved is None:
        with _quiet("tlearn.head_solver"):  # seven sweep lines per candidate would bury the leaderboard
            solved = fit_linear_head_lbfgs(head, train_x, train_y, val_x, val_y, objective=objective)
        store_solved(head, solved, cache_dir, key)
    return solved


@contextlib.contextmanager
def _quiet(name: str):
    """Lower a chatty logger to warnings for a while, unless debugging (-v) was asked for."""
    target = logging.getLogger(name)
    if logging.getLogger("tlearn").isEnabledFor(logging.DEBUG):
        yield
        return
    level = target.level
    target.setLevel(logging.WARNING)
    try:
        yield
    finally:
        target.setLevel(level)
