"""The Python API, the public face: train from a config or fit a model (a run folder either way),
resume, and load / evaluate / predict from a run folder.

A run is the stages (train/), then its end here: the temperature chosen on the validation split
(infer/calibration.py), summary.json, and the report (reports/). The trainer imports neither.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import DatasetSplits, load_data, require_validation
from .errors import ConfigError, DataError, RunFolderError
from .infer import TrainedModel, best_model_logits, calibrate_run, load, predict
from .infer.evaluation import Evaluation, data_config_for, eval_samples, evaluate, evaluation
from .metrics import per_class_scores
from .models import Classifier, create_model, resolve
from .reports import report_run
from .run_folder import checkpoint, claim_run_folder, run_folder_lock, run_folder_writes
from .run_folder import records as run_folder
from .runtime import seed_everything
from .task import Task
from .training import ResumePoint, StagesResult, check_distillation, check_pseudo_labels
from .training import runner as training

__all__ = ["train", "distill", "resume", "fit", "load", "predict", "evaluate", "evaluation", "eval_samples",
           "data_config_for", "TrainedModel", "Evaluation", "build_model"]

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
    if len(data.class_names) < Task.of(config).min_classes:
        raise DataError(f"need at least 2 classes, found {len(data.class_names)}")
    _warn_skipped(data)
    check_pseudo_labels(config, data)  # train --unlabeled: refused before the folder is claimed
    seed_everything(config.train.seed)  # the new head's initialisation follows the seed too
    model = build_model(config, len(data.class_names))
    with _claimed(out, overwrite) as run_dir:
        logger.info(f"{config.model.name} ({model.info.weights_id}), {len(data.class_names)} classes, "
                    f"{len(data.train)} train / {len(data.val)} val images, input "
                    f"{model.info.preprocessing.crop_size}px; run folder {run_dir}")
        return _run_stages(model, data, config, run_dir), run_dir


def distill(config: RunConfig, out: str | Path | None = None, data: DatasetSplits | None = None, *,
            overwrite: bool = False) -> tuple[dict, Path]:
    """`train` a student (config.model) on the soft targets of the teacher run `config.distill.teacher`
    (training/distillation.py). The student and the teacher's classes are checked before the data
    is read in full and before the run folder is claimed."""
    if config.distill is None:
        raise ConfigError("distill needs config.distill: the teacher's run folder and the loss weights")
    resolve(config.model.name)  # an unknown student: one line, before the data is read
    data = data if data is not None else load_data(config.data, config.train.seed)
    check_distillation(config, list(data.class_names))
    return train(config, out, data=data, overwrite=overwrite)


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
    """The stages, then the run's end: the temperature, summary.json, the report."""
    try:
        result = training.run_stages(model, data, config, run_dir, resume=resume)
    except KeyboardInterrupt:
        logger.info(f"interrupted: the last completed epoch is saved; continue with: tlearn train --resume {run_dir}")
        raise
    return _finish(result)


def _finish(result: StagesResult) -> dict:
    """A single-label run's temperature (from the best model's validation probabilities: kept by
    training, or a pass of their own), then summary.json, then report.html."""
    summary, run_dir, info = result.summary, result.run_dir, result.model.info
    if run_dir is None:
        return summary
    probs, calibration = result.val_probs, None  # calibration.json's record: the report shows it
    if not info.multi_label and summary["best_epoch"] > 0:
        if probs is None:
            logits, _ = best_model_logits(run_dir, result.val, result.runtime, batch_size=result.batch_size,
                                          workers=result.workers, cache_dir=result.cache_dir)
            probs = logits.softmax(dim=1)
        with run_folder_writes(run_dir, "the calibration"):
            probs, calibration = calibrate_run(run_dir, info, probs.cpu().float(), result.val.labels,
                                               result.coverage, summary)
        summary["val_per_class"] = per_class_scores(probs.argmax(dim=1), result.val.labels, info.class_names)
    with run_folder_writes(run_dir, "the run summary"):
        run_folder.write_summary(run_dir, summary)
    if result.report:
        path = report_run(run_dir, result.val, result.runtime, batch_size=result.batch_size, workers=result.workers,
                          probs=probs, calibration=calibration, cache_dir=result.cache_dir)
        logger.info(f"report: {path}")
    if result.tracker is not None:  # --track mlflow: the summary and the finished run folder's files
        result.tracker.finish(summary)
    return summary


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


