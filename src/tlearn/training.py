"""`fit`: run the strategy's stages, validate every epoch, keep the run folder current.

Frozen stages without augmentation train the head on cached features (stage_data.py);
the checkpoint is the same full model either way. After every epoch the run folder holds
a complete, resumable state (model, optimiser, scheduler, scaler, RNG), written atomically.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import checkpoint, run_folder
from .config import RunConfig
from .data.sources import DatasetSplits
from .engine import evaluate, train_one_epoch
from .features import default_cache_dir
from .head_solver import fit_linear_head_lbfgs
from .models.classifier import Classifier
from .optim import make_optimizer, make_scheduler
from .runtime import Runtime, seed_everything, setup_runtime
from .small_images import adapt_preprocessing
from .stage_data import StageData, build_stage_data
from .strategy import Stage, parameter_counts, parameter_groups, plan_stages, set_train_mode


@dataclass
class Progress:
    """Where the run stands; saved with every epoch (plain values only)."""

    stage_index: int = 0
    stage_epoch: int = 0  # completed epochs within the stage
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    stage_results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    """Everything a stage needs besides the model and the stage itself."""

    config: RunConfig
    data: DatasetSplits
    runtime: Runtime
    run_dir: Path | None
    progress: Progress
    cache_dir: Path | None
    log: Callable[[str], None]
    tensorboard: Any = None  # SummaryWriter when --tensorboard

    @property
    def writes(self) -> bool:
        return self.run_dir is not None and self.runtime.is_main


def fit(model: Classifier, data: DatasetSplits, config: RunConfig, run_dir: str | Path | None = None,
        *, runtime: Runtime | None = None, resume: dict[str, Any] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `model` on `data` by `config`'s strategy; returns the summary (also in run_dir)."""
    config = config.validate()
    tc = config.train
    runtime = runtime or setup_runtime(tc.device, tc.amp, tc.amp_dtype, tc.channels_last)
    seed_everything(tc.seed, tc.deterministic)
    model.info.class_names = list(data.class_names)
    if resume is None:  # a resumed run keeps the preprocessing it started with
        model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, data.train,
                                                       config.data.small_images, log)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    progress = Progress(**resume["progress"]) if resume else Progress()
    cache_dir = (Path(tc.cache_dir) if tc.cache_dir else default_cache_dir()) if tc.use_cache else None
    run = Run(config, data, runtime, Path(run_dir) if run_dir is not None else None, progress, cache_dir, log)
    if run.writes and resume is None:
        _start_run_folder(run, model)
    if run.writes and tc.tensorboard:
        run.tensorboard = _open_tensorboard(run.run_dir)
    stages = plan_stages(tc)
    start = progress.stage_index
    if resume is not None:
        _restore_rng(resume["rng"])
        if progress.stage_epoch >= stages[start].epochs:  # stopped at a stage boundary
            start, progress.stage_epoch, resume = start + 1, 0, None
    try:
        for index in range(start, len(stages)):
            progress.stage_index = index
            _run_stage(model, stages[index], index, run, resume)
            resume, progress.stage_epoch = None, 0
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
    return _finish_run(model, run)


def _finish_run(model: Classifier, run: Run) -> dict[str, Any]:
    summary = _summary(model, run)
    if run.writes:
        if run.progress.best_top1 < 0:  # zero epochs: still leave a loadable model
            checkpoint.save_model(run.run_dir, model)
        run_folder.write_summary(run.run_dir, summary)
        if run.config.train.report:
            from .run_report import report_run

            path = report_run(run.run_dir, run.data.val, run.runtime,
                              batch_size=max(run.config.data.batch_size, 64), workers=run.config.data.workers)
            run.log(f"report: {path}")
    return summary


def _start_run_folder(run: Run, model: Classifier) -> None:
    config, runtime, data = run.config, run.runtime, run.data
    run.run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"lr": config.train.resolved_lr, "weight_decay": config.train.resolved_weight_decay,
                "device": str(runtime.device), "world_size": runtime.world_size,
                "amp_dtype": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else None,
                "preprocessing": model.info.preprocessing.to_dict(), "weights_id": model.info.weights_id,
                "data": data.description, "num_train": len(data.train), "num_val": len(data.val),
                "class_names": list(data.class_names), "run_dir": str(run.run_dir)}
    run_folder.write_config(run.run_dir, config, resolved)
    run_folder.write_skipped(run.run_dir, data.skipped)
    checkpoint.save_model_info(run.run_dir, model.info)


def _run_stage(model: Classifier, stage: Stage, index: int, run: Run, resume: dict[str, Any] | None) -> None:
    tc, runtime = run.config.train, run.runtime
    mark = time.perf_counter()
    stage.apply(model)
    trainable, frozen = parameter_counts(model)
    stage_data = build_stage_data(model, stage, run.data, run.config, runtime, run.cache_dir, run.log)
    run.log(f"stage {index + 1} {stage.name}: {stage.epochs} epochs, trainable params {trainable:,}, "
            f"frozen params {frozen:,}" + (", head on cached features" if stage_data.cached else ""))
    optimizer = make_optimizer(parameter_groups(model, tc), tc)
    steps = len(stage_data.train)
    scheduler = make_scheduler(optimizer, stage.epochs * steps, int(round(tc.warmup_epochs * steps)))
    scaler = runtime.grad_scaler()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
    state = (optimizer, scheduler, scaler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    if stage_data.cached and tc.head_solver == "lbfgs" and isinstance(model.head, nn.Linear):
        _solve_head(model, stage, index, run, stage_data, state, loss_fn, mark)
        return
    train_module = stage_data.module
    if runtime.distributed and not stage_data.cached:
        train_module = nn.parallel.DistributedDataParallel(model, find_unused_parameters=bool(model.info.aux_modules))
    num_classes = model.info.num_classes
    for epoch in range(run.progress.stage_epoch, stage.epochs):
        stage_data.start_epoch(tc.seed, epoch)
        set_train_mode(model, tc.bn_train)
        with torch.autograd.set_detect_anomaly(tc.detect_anomaly):
            stats = train_one_epoch(train_module, stage_data.train, optimizer, scheduler, runtime, loss_fn,
                                    num_classes=num_classes, scaler=scaler, aux_weight=run.config.model.aux_weight,
                                    description=f"{stage.name} epoch {epoch + 1}/{stage.epochs}",
                                    prepare=stage_data.prepare, sharded=not stage_data.cached)
        result = evaluate(stage_data.module, stage_data.val, runtime, num_classes, loss_fn,
                          prepare=stage_data.prepare, description="val", sharded=not stage_data.cached)
        run.log(f"  epoch {epoch + 1}/{stage.epochs}: train loss {stats['loss']:.4f} acc {stats['top1']:.4f} | "
                f"val loss {result.loss:.4f} top1 {result.top1:.4f} top5 {result.top5:.4f} | "
                f"{stats['images_per_s']:.0f} img/s")
        mark = _finish_epoch(model, stage, index, epoch, stats, result, run, stage_data, state, mark)


def _solve_head(model: Classifier, stage: Stage, index: int, run: Run, stage_data: StageData, state,
                loss_fn, mark: float) -> None:
    """One full-batch solve replaces the epochs: the head is a convex problem on fixed features."""
    train_x, train_y = stage_data.train.dataset.tensors
    val_x, val_y = stage_data.val.dataset.tensors
    solved = fit_linear_head_lbfgs(model.head, train_x, train_y, val_x, val_y, log=run.log)
    result = evaluate(model.head, stage_data.val, run.runtime, model.info.num_classes, loss_fn,
                      prepare=stage_data.prepare, description="val", sharded=False)
    stats = {"loss": solved.train_loss, "top1": solved.train_top1, "images_per_s": 0.0}
    run.log(f"  L-BFGS head: l2 {solved.l2:g}, val top1 {result.top1:.4f} top5 {result.top5:.4f}")
    one_pass = Stage(stage.name, 1, stage.train_backbone)  # one solve counts as one epoch
    _finish_epoch(model, one_pass, index, 0, stats, result, run, stage_data, state, mark)


def _finish_epoch(model: Classifier, stage: Stage, index: int, epoch: int, stats: dict, result, run: Run,
                  stage_data: StageData, state, mark: float) -> float:
    """Record the epoch's metrics, track the best model, write checkpoints; returns the time mark."""
    progress, optimizer = run.progress, state[0]
    now = time.perf_counter()
    progress.train_seconds += now - mark  # includes feature extraction and validation
    progress.stage_epoch = epoch + 1
    lrs = {g.get("name", ""): g["lr"] for g in optimizer.param_groups}
    row = {"stage": stage.name, "stage_epoch": epoch + 1, "epoch": len(progress.rows) + 1,
           "train_loss": stats["loss"], "train_top1": stats["top1"], "val_loss": result.loss,
           "val_top1": result.top1, "val_top5": result.top5, "lr_head": lrs.get("head", lrs.get("head_no_decay")),
           "lr_backbone": lrs.get("backbone", ""), "seconds": now - mark,
           "images_per_s": stats.get("images_per_s", 0.0), "cached_features": stage_data.cached}
    progress.rows.append(row)
    improved = result.top1 > progress.best_top1
    if improved:
        progress.best_top1, progress.best_top5, progress.best_epoch = result.top1, result.top5, row["epoch"]
    if epoch + 1 == stage.epochs:
        trainable, frozen = parameter_counts(model)
        progress.stage_results.append({"name": stage.name, "epochs": epoch + 1, "val_top1": result.top1,
                                       "val_top5": result.top5, "trainable_params": trainable,
                                       "frozen_params": frozen, "cached_features": stage_data.cached})
    if run.writes:
        _save_epoch(run.run_dir, model, improved, progress, state)
    if run.tensorboard is not None:
        _log_tensorboard(run.tensorboard, row, optimizer)
    return now


def _save_epoch(run_dir: Path, model: Classifier, improved: bool, progress: Progress, state) -> None:
    optimizer, scheduler, scaler = state
    if improved:
        checkpoint.save_model(run_dir, model)
    checkpoint.save_model(run_dir, model, checkpoint.LAST_FILE)
    run_folder.write_metrics(run_dir, progress.rows)
    checkpoint.save_train_state(run_dir, {
        "progress": vars(progress),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    })


def _restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(_as_tuple(rng["python"]))
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _open_tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from .errors import ConfigError

        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log_tensorboard(writer, row: dict[str, Any], optimizer) -> None:
    step = row["epoch"]
    for key in ("train_loss", "val_loss"):
        writer.add_scalar(f"loss/{key[:-5]}", row[key], step)
    for key in ("train_top1", "val_top1", "val_top5"):
        writer.add_scalar(f"accuracy/{key}", row[key], step)
    for group in optimizer.param_groups:
        writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], step)
    writer.flush()


def _summary(model: Classifier, run: Run) -> dict[str, Any]:
    progress, data = run.progress, run.data
    return {
        "model": model.info.name, "weights": model.info.weights_id, "strategy": run.config.train.strategy,
        "val_top1": max(progress.best_top1, 0.0), "val_top5": progress.best_top5,
        "best_epoch": progress.best_epoch, "train_seconds": round(progress.train_seconds, 2),
        "stages": progress.stage_results, "num_classes": len(data.class_names),
        "class_names": list(data.class_names), "num_train": len(data.train), "num_val": len(data.val),
        "skipped_files": len(data.skipped), "epochs_completed": len(progress.rows),
    }
