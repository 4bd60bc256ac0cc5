"""The Python API: train from a config, evaluate a run, load a run to predict."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from . import checkpoint, run_folder, training
from .balance import class_counts, imbalance_ratio, warn_if_imbalanced
from .calibration import probabilities
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data.images import open_rgb
from .data.samples import Samples
from .data.sources import BUILTIN, DatasetSplits, default_eval_split, load_data, require_validation, resolve_split
from .data.transforms import eval_transform
from .errors import ConfigError, DataError, RunFolderError
from .features import default_cache_dir
from .inference import classify
from .metrics import ClassificationMeter
from .models.classifier import Classifier
from .models.factory import create_model
from .multilabel import DEFAULT_THRESHOLD, predict_multi_label, remap_multi_hot, score
from .preprocessing import Preprocessing
from .run_calibration import calibration_figures, mark_unknown, resolve_min_confidence
from .run_guard import claim_run_folder, run_folder_lock
from .runtime import seed_everything, setup_runtime
from .train_overlap import count_training_images
from .train_state import ResumePoint
from .tta import Views, average_views, views_for, views_transform

logger = logging.getLogger(__name__)


def build_model(config: RunConfig, num_classes: int) -> Classifier:
    mc = config.model
    return create_model(mc.name, num_classes, mc.weights, aux_logits=mc.aux_weight > 0,
                        image_size=config.data.image_size)


def train(config: RunConfig, out: str | Path | None = None, data: DatasetSplits | None = None, *,
          overwrite: bool = False) -> tuple[dict, Path]:
    """Load data (unless given), build the model, fit; returns (summary, run folder).

    `out` must be new or empty: a folder holding a run is refused unless `overwrite` (which clears
    that run's files first, and only those); run_guard.py. Default: runs/<timestamp>."""
    data = data if data is not None else load_data(config.data, config.train.seed)
    require_validation(data, config.data.val_split)
    if len(data.class_names) < (1 if config.data.label_delim is not None else 2):  # one tag: present or not
        raise DataError(f"need at least 2 classes, found {len(data.class_names)}")
    _warn_skipped(data)
    seed_everything(config.train.seed)  # the new head's initialisation follows the seed too
    model = build_model(config, len(data.class_names))
    with _claimed(out, overwrite) as run_dir:
        logger.info(f"{config.model.name} ({model.info.weights_id}), {len(data.class_names)} classes, "
                    f"{len(data.train)} train / {len(data.val)} val images, input "
                    f"{model.info.preprocessing.crop_size}px; run folder {run_dir}")
        return _run_stages(model, data, config, run_dir), run_dir


def _warn_skipped(data: DatasetSplits) -> None:
    if data.skipped:
        shown = ", ".join(f"{p} ({r})" for p, r in data.skipped[:3])
        logger.warning(f"skipped {len(data.skipped)} unusable file(s): {shown}"
                       + (" ..." if len(data.skipped) > 3 else "") + " (full list in skipped_files.txt)")


@contextlib.contextmanager
def _claimed(out: str | Path | None, overwrite: bool):
    """The new run's folder, locked for the run (by the process that writes it: rank 0 under torchrun)."""
    run_dir = Path(out) if out is not None else run_folder.default_run_dir(reserve=_writes_run_folder())
    if not _writes_run_folder():
        yield run_dir
        return
    with claim_run_folder(run_dir, overwrite):
        yield run_dir


def _writes_run_folder() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _run_stages(model: Classifier, data: DatasetSplits, config: RunConfig, run_dir: Path,
                resume: ResumePoint | None = None) -> dict:
    try:
        return training.run_stages(model, data, config, run_dir, resume=resume)
    except KeyboardInterrupt:
        logger.info(f"interrupted: the last completed epoch is saved; continue with: tlearn train --resume {run_dir}")
        raise


def resume(run_dir: str | Path) -> tuple[dict, Path]:
    """Continue an interrupted run from its last committed epoch (from the start if none was)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    with run_folder_lock(run_dir) if _writes_run_folder() else contextlib.nullcontext():
        if (run_dir / run_folder.SUMMARY_FILE).is_file():
            raise RunFolderError(f"run {run_dir} already finished (summary.json exists); nothing to resume")
        config = run_folder.read_config(run_dir)
        data = load_data(config.data, config.train.seed)
        if not checkpoint.has_train_state(run_dir):
            logger.info(f"run {run_dir} stopped before its first epoch was committed: starting it again")
            require_validation(data, config.data.val_split)
            seed_everything(config.train.seed)
            return _run_stages(build_model(config, len(data.class_names)), data, config, run_dir), run_dir
        point = ResumePoint.read(run_dir)
        model = checkpoint.build_model(checkpoint.read_model_info(run_dir))
        checkpoint.load_weights(model, point.weights, run_dir / checkpoint.STATE_FILE)
        logger.info(f"resuming {run_dir} after epoch {len(point.progress.rows)}")
        return _run_stages(model.train(), data, config, run_dir, resume=point), run_dir


def fit(model: Classifier, data: str | DatasetSplits, out: str | Path | None = None, *, overwrite: bool = False,
        **options: Any) -> dict:
    """Train `model` on a data source ("digits", a folder...) or loaded splits into the run folder
    `out` (default runs/<timestamp>, as the command line; logged), which `tlearn.load` reads back.

    `options` are any DataConfig/TrainConfig field (strategy, epochs, head_epochs, lr, ...)
    and `aux_weight`. strategy="as-is" trains exactly the parameters left trainable.
    """
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {"aux_weight"}
    unknown = set(options) - data_fields - train_fields - model_fields
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    source = data if isinstance(data, str) else "in-memory"
    config = RunConfig(
        data=DataConfig(source=source, **{k: v for k, v in options.items() if k in data_fields}),
        model=ModelConfig(name=model.info.name, weights=model.info.weights,
                          **{k: v for k, v in options.items() if k in model_fields}),
        train=TrainConfig(**{k: v for k, v in options.items() if k in train_fields}),
    )
    splits = load_data(config.data, config.train.seed) if isinstance(data, str) else data
    require_validation(splits, config.data.val_split)
    with _claimed(out, overwrite) as run_dir:
        logger.info(f"run folder {run_dir}")
        return _run_stages(model, splits, config, run_dir)


@dataclass
class TrainedModel:
    """A trained classifier with everything needed to use it: preprocessing and class names."""

    model: Classifier
    preprocessing: Preprocessing
    class_names: list[str]
    run_dir: Path | None = None  # where it was loaded from: predict's --coverage reads its calibration.json

    @property
    def multi_label(self) -> bool:
        return self.model.info.multi_label

    @functools.cached_property
    def transform(self):
        return eval_transform(self.preprocessing)

    def predict(self, images: Iterable[str | Path | Image.Image | torch.Tensor] | str | Path,
                top_k: int = 1, batch_size: int = 32, *, tta: bool = False, tta_crops: int = 1,
                min_confidence: float | None = None, coverage: float | None = None) -> list[dict[str, Any]]:
        """Top-k labels and (calibrated) probabilities for paths, PIL images, or preprocessed tensors.

        Inputs are decoded a batch at a time, so a long list of paths never sits in memory decoded.
        `tta`: average the logits of each image and its horizontal flip; `tta_crops=5`: of five
        crops (tta.py). A preprocessed tensor is then its views, (V, C, H, W).
        Below `min_confidence` (or the threshold answering `coverage` of the validation images; by
        default the run's own, from train --coverage) the label is "unknown".
        """
        if isinstance(images, (str, Path, Image.Image, torch.Tensor)):
            images = [images]
        transform = self.views_transform(tta, tta_crops)
        threshold = self.min_confidence(min_confidence, coverage)
        warn_if_views_and_threshold(transform, threshold)
        results: list[dict[str, Any]] = []
        for batch in _batched(images, batch_size):
            results += self.predict_batch(torch.stack([self.prepare(item, transform) for item in batch]), top_k,
                                          threshold)
        return results

    def min_confidence(self, min_confidence: float | None = None, coverage: float | None = None) -> float | None:
        """The confidence threshold predict applies (run_calibration.resolve_min_confidence)."""
        return resolve_min_confidence(self.model.info, self.run_dir, min_confidence, coverage)

    def views_transform(self, tta: bool = False, tta_crops: int = 1):
        """The transform of `--tta` / `--tta-crops` (None: the plain image)."""
        views = views_for(tta, tta_crops)
        return None if views is None else views_transform(self.preprocessing, views)

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor, top_k: int = 1,
                      min_confidence: float | None = None) -> list[dict[str, Any]]:
        """Top-k of a batch of preprocessed images (what `tlearn predict` feeds); "unknown" below
        `min_confidence` (a number: `min_confidence()` resolves flags). Multi-label: the labels at or
        above their thresholds ("labels", "probs") and every class's probability ("scores")."""
        self.model.eval()
        views = batch.shape[1] if batch.ndim == 5 else 1  # test-time augmentation: (images, views, C, H, W)
        inputs = batch.flatten(0, 1) if batch.ndim == 5 else batch
        logits = average_views(self.model(inputs.to(next(self.model.parameters()).device)).float(), views)
        if self.multi_label:
            return predict_multi_label(logits.sigmoid().cpu(), self.model.info.thresholds, self.class_names)
        probs = probabilities(logits, self.model.info)  # softmax(logits / T): calibrated
        values, indices = probs.topk(min(top_k, len(self.class_names)), dim=1)
        return mark_unknown([{"labels": [self.class_names[i] for i in row_indices], "probs": row_values,
                              "label": self.class_names[row_indices[0]], "prob": row_values[0]}
                             for row_values, row_indices in zip(values.tolist(), indices.tolist())], min_confidence)

    def prepare(self, item: str | Path | Image.Image | torch.Tensor, transform=None) -> torch.Tensor:
        """One input as the model's preprocessed CHW tensor (`transform`: its views, tta.py)."""
        if isinstance(item, torch.Tensor):
            return item if item.ndim == 3 or transform is not None else item.squeeze(0)
        transform = transform or self.transform
        image = item if isinstance(item, Image.Image) else open_rgb(item, transform.decode_size)
        return transform(image.convert("RGB"))


def warn_if_views_and_threshold(views_transform, threshold: float | None) -> None:
    """The temperature and the threshold were fitted on single views: averaged views are less
    confident, so TTA answers fewer images than the threshold's coverage promises."""
    if views_transform is not None and threshold:
        logger.warning("the confidence threshold was chosen on single views; with test-time augmentation "
                       "the averaged probabilities are less confident, so fewer images are answered")


def predict(run_or_model: str | Path | TrainedModel, images: Iterable[str | Path | Image.Image] | str | Path,
            top_k: int = 1, batch_size: int = 32, *, tta: bool = False, tta_crops: int = 1,
            min_confidence: float | None = None, coverage: float | None = None,
            device: str = "cpu") -> list[dict[str, Any]]:
    """`load(run).predict(...)`: top-k labels of images (multi-label: those at their thresholds;
    single-label: "unknown" below the confidence threshold, see TrainedModel.predict)."""
    trained = run_or_model if isinstance(run_or_model, TrainedModel) else load(run_or_model, device)
    return trained.predict(images, top_k, batch_size, tta=tta, tta_crops=tta_crops, min_confidence=min_confidence,
                           coverage=coverage)


def _batched(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a run folder's best model with its preprocessing and class names."""
    model = checkpoint.load_model(run_dir)
    model.to(torch.device(device))
    return TrainedModel(model, model.info.preprocessing, list(model.info.class_names), Path(run_dir))


def evaluate(run_or_model: str | Path | TrainedModel, data: str | Path, split: str | None = None,
             batch_size: int = 64, device: str = "auto", workers: int | None = None, *,
             labels: str | Path | None = None, path_col: str | None = None, label_col: str | None = None,
             label_delim: str | None = None, tta: bool = False, tta_crops: int = 1) -> dict:
    """top1, top5, balanced_acc, f1_macro, per_class and confusion of a run on a dataset, classes
    matched by name; warns when the data's largest class has 10x the images of its smallest.
    A multi-label run: map, f1_micro, f1_macro (at its stored thresholds), per_class AP/F1/support.

    `split`: train, val, test or all; by default the validation split, or all of a folder
    without split folders, or a table's test rows. Built-in data sets, plain folders and tables
    are split as the run was. `labels`: a .csv/.tsv table of paths under `data` and labels; a
    run trained on a table reads it again when `data` is the run's own data folder.
    `tta`: also top1_tta and top5_tta (multi-label: map_tta), the logits of each image and its
    horizontal flip averaged; `tta_crops=5`: five crops (and their flips with `tta`), tta.py.
    """
    return evaluation(run_or_model, data, split, batch_size, device, workers, labels=labels, path_col=path_col,
                      label_col=label_col, label_delim=label_delim, tta=tta, tta_crops=tta_crops).result


@dataclass
class Evaluation:
    result: dict  # what `evaluate` returns
    probs: torch.Tensor  # softmax(logits / T) (multi-label: sigmoid) of every sample, in order (the report's input)
    samples: Samples


def evaluation(run_or_model: str | Path | TrainedModel, data: str | Path, split: str | None = None,
               batch_size: int = 64, device: str = "auto", workers: int | None = None, *,
               labels: str | Path | None = None, path_col: str | None = None,
               label_col: str | None = None, label_delim: str | None = None, tta: bool = False,
               tta_crops: int = 1) -> Evaluation:
    """`evaluate`, with the probabilities and samples behind the figures (one pass for both)."""
    views = views_for(tta, tta_crops)
    trained = run_or_model if isinstance(run_or_model, TrainedModel) else load(run_or_model)
    samples = eval_samples(run_or_model, data, split, trained.class_names, labels=labels, path_col=path_col,
                           label_col=label_col, label_delim=label_delim, multi_label=trained.multi_label)
    overlap = 0 if isinstance(run_or_model, TrainedModel) else _training_overlap(
        Path(run_or_model), data, split, samples, labels=labels, path_col=path_col, label_col=label_col,
        label_delim=label_delim)
    evaluated = (_evaluate_multi_label(trained, samples, batch_size, device, workers, views) if trained.multi_label
                 else _evaluate_single_label(trained, samples, data, batch_size, device, workers, views))
    if overlap:
        evaluated.result["train_overlap"] = overlap
    return evaluated


def _training_overlap(run_dir: Path, data: str | Path, split: str | None, samples: Samples, **table) -> int:
    """How many evaluated images the run trained on (warned about; train_overlap.py)."""
    data_config, seed = data_config_for(run_dir, data, **table)
    trained_on = run_folder.read_config(run_dir).data
    return count_training_images(trained_on, seed, data_config, split or default_eval_split(data_config), samples)


def _evaluate_single_label(trained: TrainedModel, samples: Samples, data: str | Path, batch_size: int, device: str,
                           workers: int | None, views: Views | None) -> Evaluation:
    counts = class_counts(samples.labels, len(trained.class_names))
    warn_if_imbalanced(counts, trained.class_names, f"the evaluation data ({data})")
    runtime = setup_runtime(device)
    trained.model.to(runtime.device)
    logits, averaged, targets = _classify(trained, samples, runtime, batch_size, workers, views)
    probs = probabilities(logits, trained.model.info)  # calibrated: softmax(logits / T)
    result = {**_scores(logits, targets, trained.class_names), "imbalance_ratio": round(imbalance_ratio(counts), 2),
              **calibration_figures(logits, probs, targets, trained.model.info)}
    if averaged is not None:
        tta_result = _scores(averaged, targets, trained.class_names)
        result.update(top1_tta=tta_result["top1"], top5_tta=tta_result["top5"], tta_views=views.count)
    return Evaluation(result, probs, samples)


def _scores(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict:
    meter = ClassificationMeter(len(class_names))
    if len(targets):
        meter.update(logits, targets, torch.nn.functional.cross_entropy(logits, targets).item())
    return meter.result().to_dict(class_names)


def _classify(trained: TrainedModel, samples: Samples, runtime, batch_size: int, workers: int | None,
              views: Views | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(plain logits, the views' averaged logits or None, labels): one pass when plain evaluation's
    image is one of the views, else a plain pass too."""
    logits, targets = classify(trained.model, samples, runtime, batch_size=batch_size, workers=workers,
                               cache_dir=default_cache_dir(), views=views)
    if views is None:
        return logits, None, targets
    index = views.plain_index(trained.preprocessing)
    plain = logits[:, index] if index is not None else classify(
        trained.model, samples, runtime, batch_size=batch_size, workers=workers, cache_dir=default_cache_dir())[0]
    return plain.contiguous(), logits.mean(dim=1), targets


def eval_samples(run_or_model: str | Path | TrainedModel, data: str | Path, split: str | None = None,
                 class_names: list[str] | None = None, *, labels: str | Path | None = None,
                 path_col: str | None = None, label_col: str | None = None, label_delim: str | None = None,
                 multi_label: bool = False) -> Samples:
    """The samples `tlearn eval` uses, labels mapped onto the run's classes by name (multi-hot
    rows for a `multi_label` run: a class folder's images then carry that one class)."""
    if isinstance(run_or_model, TrainedModel) and str(data) in BUILTIN:
        raise ConfigError("built-in datasets need the run folder (its split settings), not a loaded model")
    run_dir = None if isinstance(run_or_model, TrainedModel) else Path(run_or_model)
    data_config, seed = data_config_for(run_dir, data, labels=labels, path_col=path_col, label_col=label_col,
                                        label_delim=label_delim)
    if run_dir is not None:
        class_names = class_names or list(checkpoint.read_model_info(run_dir).class_names)
    found = resolve_split(data_config, split or default_eval_split(data_config), seed)
    known = {name: i for i, name in enumerate(class_names)}
    foreign = [n for n in found.class_names if n not in known]
    if foreign:
        raise DataError(f"class(es) the model does not know: {', '.join(foreign[:5])}; "
                        f"the model knows {', '.join(class_names[:10])}")
    if multi_label:
        return dataclasses.replace(found.samples, labels=remap_multi_hot(found.samples.labels, found.class_names,
                                                                         class_names))
    if found.samples.labels and isinstance(found.samples.labels[0], tuple):
        raise ConfigError("--label-delim (multi-label data) needs a multi-label run; this run is single-label")
    labels = [known[found.class_names[label]] for label in found.samples.labels]
    return dataclasses.replace(found.samples, labels=labels)


def data_config_for(run_dir: Path | None, data: str | Path, *, labels: str | Path | None = None,
                    path_col: str | None = None, label_col: str | None = None,
                    label_delim: str | None = None) -> tuple[DataConfig, int]:
    """(data settings, seed) to read `data` for a run: its split settings, its table's columns and
    label delimiter, and its labels table when `data` is the folder it trained on (explicit
    `labels`, columns and delimiter win)."""
    if run_dir is None:
        return DataConfig(source=str(data), labels=_text(labels), path_col=path_col, label_col=label_col,
                          label_delim=label_delim), 0
    config = run_folder.read_config(run_dir)
    trained = config.data
    same_root = trained.labels and str(data) not in BUILTIN and _same_path(data, trained.source)
    table = _text(labels) or (trained.labels if same_root else None)
    if table:  # the run's table format (its columns, its delimiter) unless told otherwise
        path_col, label_col = path_col or trained.path_col, label_col or trained.label_col
        label_delim = label_delim or trained.label_delim
    return (dataclasses.replace(trained, source=str(data), labels=table, path_col=path_col, label_col=label_col,
                                label_delim=label_delim if table else None), config.train.seed)


def _text(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _evaluate_multi_label(trained: TrainedModel, samples: Samples, batch_size: int, device: str,
                          workers: int | None, views: Views | None = None) -> Evaluation:
    """mAP, F1 at the run's stored thresholds (and at 0.5), per-class AP/F1/support; with
    `views`, map_tta and f1_micro_tta of the averaged logits too."""
    runtime = setup_runtime(device)
    trained.model.to(runtime.device)
    logits, averaged, targets = _classify(trained, samples, runtime, batch_size, workers, views)
    targets = targets.float().reshape(len(logits), len(trained.class_names))
    thresholds = trained.model.info.thresholds or [DEFAULT_THRESHOLD] * len(trained.class_names)

    def scored(outputs: torch.Tensor):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets).item() if len(targets) else 0.0
        return score(outputs.sigmoid().numpy(), targets.numpy(), thresholds, loss)

    result = scored(logits).to_dict(trained.class_names)
    if averaged is not None:
        tta_result = scored(averaged)
        result.update(map_tta=tta_result.map, f1_micro_tta=tta_result.f1_micro, tta_views=views.count)
    return Evaluation(result, logits.sigmoid(), samples)
