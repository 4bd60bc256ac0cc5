"""`fit`: run the strategy's stages, validate every epoch, keep the run folder current.

Frozen stages without augmentation train the head on cached features (see features.py);
the checkpoint is the same full model either way.
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
from torch.utils.data import DataLoader, TensorDataset

from . import checkpoint, run_folder
from .config import RunConfig
from .data.loaders import make_loader
from .data.sources import DatasetSplits
from .data.transforms import eval_transform, train_transform
from .engine import evaluate, train_one_epoch
from .features import cached_features, default_cache_dir
from .head_solver import fit_linear_head_lbfgs
from .models.classifier import Classifier
from .optim import make_optimizer, make_scheduler
from .runtime import Runtime, seed_everything, setup_runtime
from .strategy import Stage, parameter_counts, parameter_groups, plan_stages, set_train_mode


@dataclass
class StageData:
    """Loaders for one stage: images through the whole model, or cached features through the head."""

    train: DataLoader
    val: DataLoader
    module: nn.Module  # what the loaders feed: the classifier, or only its head
    prepare: Callable
    cached: bool


@dataclass
class Progress:
    stage_index: int = 0
    stage_epoch: int = 0  # completed epochs within the stage
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    stage_results: list[dict[str, Any]] = field(default_factory=list)


def fit(model: Classifier, data: DatasetSplits, config: RunConfig, run_dir: str | Path | None = None,
        *, runtime: Runtime | None = None, resume: dict[str, Any] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `model` on `data` by `config`'s strategy; returns the summary (also in run_dir)."""
    config = config.validate()
    tc = config.train
    runtime = runtime or setup_runtime(tc.device, tc.amp, tc.amp_dtype, tc.channels_last)
    seed_everything(tc.seed, tc.deterministic)
    model.info.class_names = list(data.class_names)
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    run_dir = Path(run_dir) if run_dir is not None else None
    progress = Progress(**{k: v for k, v in resume["progress"].items()}) if resume else Progress()
    if run_dir is not None and runtime.is_main and resume is None:
        _start_run_folder(run_dir, model, data, config, runtime)
    stages = plan_stages(tc)
    cache_dir = (Path(tc.cache_dir) if tc.cache_dir else default_cache_dir()) if tc.use_cache else None
    start = progress.stage_index
    if resume is not None and progress.stage_epoch >= stages[start].epochs:  # stopped at a boundary
        start, progress.stage_epoch, resume = start + 1, 0, None
    for index in range(start, len(stages)):
        progress.stage_index = index
        _run_stage(model, stages[index], index, data, config, runtime, run_dir, progress, cache_dir,
                   resume, log)
        resume, progress.stage_epoch = None, 0
    summary = _summary(model, data, config, progress)
    if run_dir is not None and runtime.is_main:
        run_folder.write_summary(run_dir, summary)
        if progress.best_top1 < 0:  # zero epochs: still leave a loadable model
            checkpoint.save_model(run_dir, model)
    return summary


def _start_run_folder(run_dir: Path, model: Classifier, data: DatasetSplits, config: RunConfig,
                      runtime: Runtime) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = {"lr": config.train.resolved_lr, "weight_decay": config.train.resolved_weight_decay,
                "device": str(runtime.device), "world_size": runtime.world_size,
                "amp_dtype": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else None,
                "preprocessing": model.info.preprocessing.to_dict(), "weights_id": model.info.weights_id,
                "data": data.description, "num_train": len(data.train), "num_val": len(data.val),
                "class_names": list(data.class_names), "run_dir": str(run_dir)}
    run_folder.write_config(run_dir, config, resolved)
    run_folder.write_skipped(run_dir, data.skipped)
    checkpoint.save_model_info(run_dir, model.info)


def _run_stage(model: Classifier, stage: Stage, index: int, data: DatasetSplits, config: RunConfig,
               runtime: Runtime, run_dir: Path | None, progress: Progress, cache_dir: Path | None,
               resume: dict[str, Any] | None, log: Callable) -> None:
    tc = config.train
    mark = time.perf_counter()
    stage.apply(model)
    trainable, frozen = parameter_counts(model)
    stage_data = _stage_data(model, stage, data, config, runtime, cache_dir, log)
    log(f"stage {index + 1} {stage.name}: {stage.epochs} epochs, trainable params {trainable:,}, "
        f"frozen params {frozen:,}" + (", head on cached features" if stage_data.cached else ""))
    optimizer = make_optimizer(parameter_groups(model, tc), tc)
    steps = len(stage_data.train)
    scheduler = make_scheduler(optimizer, stage.epochs * steps, int(round(tc.warmup_epochs * steps)))
    scaler = runtime.grad_scaler()
    train_module = stage_data.module
    if runtime.distributed and not stage_data.cached:
        train_module = nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=bool(model.info.aux_modules))
    if resume is not None:
        _restore_training_state(resume, optimizer, scheduler, scaler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    num_classes = model.info.num_classes
    if stage_data.cached and tc.head_solver == "lbfgs" and isinstance(model.head, nn.Linear):
        # One full-batch solve replaces the epochs: the head is a convex problem on fixed features.
        train_x, train_y = stage_data.train.dataset.tensors
        val_x, val_y = stage_data.val.dataset.tensors
        solved = fit_linear_head_lbfgs(model.head, train_x, train_y, val_x, val_y, log=log)
        result = evaluate(model.head, stage_data.val, runtime, num_classes, loss_fn,
                          prepare=stage_data.prepare, description="val")
        stats = {"loss": solved.train_loss, "top1": solved.train_top1, "images_per_s": 0.0}
        log(f"  L-BFGS head: l2 {solved.l2:g}, val top1 {result.top1:.4f} top5 {result.top5:.4f}")
        stage = Stage(stage.name, 1, stage.train_backbone)  # one solve counts as one epoch
        _finish_epoch(model, stage, index, 0, stats, result, optimizer, stage_data, runtime,
                      run_dir, progress, scheduler, scaler, mark)
        return
    for epoch in range(progress.stage_epoch, stage.epochs):
        if hasattr(stage_data.train.sampler, "set_epoch"):
            stage_data.train.sampler.set_epoch(epoch)
        set_train_mode(model, tc.bn_train)
        with torch.autograd.set_detect_anomaly(tc.detect_anomaly):
            stats = train_one_epoch(train_module, stage_data.train, optimizer, scheduler, runtime, loss_fn,
                                    num_classes=num_classes, scaler=scaler, aux_weight=config.model.aux_weight,
                                    description=f"{stage.name} {epoch + 1}/{stage.epochs}",
                                    prepare=stage_data.prepare)
        result = evaluate(stage_data.module, stage_data.val, runtime, num_classes, loss_fn,
                          prepare=stage_data.prepare, description="val")
        log(f"  epoch {epoch + 1}/{stage.epochs}: train loss {stats['loss']:.4f} acc {stats['top1']:.4f} | "
            f"val loss {result.loss:.4f} top1 {result.top1:.4f} top5 {result.top5:.4f} | "
            f"{stats['images_per_s']:.0f} img/s")
        mark = _finish_epoch(model, stage, index, epoch, stats, result, optimizer, stage_data, runtime,
                             run_dir, progress, scheduler, scaler, mark)


def _finish_epoch(model: Classifier, stage: Stage, index: int, epoch: int, stats: dict, result,
                  optimizer, stage_data: StageData, runtime: Runtime, run_dir: Path | None,
                  progress: Progress, scheduler, scaler, mark: float) -> float:
    """Record the epoch's metrics, track the best model, write checkpoints; returns the time mark."""
    now = time.perf_counter()
    progress.train_seconds += now - mark  # includes feature extraction and validation
    progress.stage_epoch = epoch + 1
    row = _metrics_row(stage, index, epoch, progress, stats, result, optimizer, stage_data.cached)
    row["seconds"] = now - mark
    progress.rows.append(row)
    improved = result.top1 > progress.best_top1
    if improved:
        progress.best_top1, progress.best_top5, progress.best_epoch = result.top1, result.top5, row["epoch"]
    if epoch + 1 == stage.epochs:
        trainable, frozen = parameter_counts(model)
        progress.stage_results.append({"name": stage.name, "epochs": epoch + 1, "val_top1": result.top1,
                                       "val_top5": result.top5, "trainable_params": trainable,
                                       "frozen_params": frozen, "cached_features": stage_data.cached})
    if run_dir is not None and runtime.is_main:
        _save_epoch(run_dir, model, improved, progress, optimizer, scheduler, scaler)
    return now


def _stage_data(model: Classifier, stage: Stage, data: DatasetSplits, config: RunConfig,
                runtime: Runtime, cache_dir: Path | None, log: Callable) -> StageData:
    dc, tc = config.data, config.train
    prep = model.info.preprocessing
    augment = dc.augment if stage.train_backbone else ("none" if dc.augment == "none" else dc.probe_augment)
    if not stage.train_backbone and augment == "none":
        # Frozen backbone in eval mode + fixed inputs = fixed features: compute them once.
        features = {}
        for split, samples in (("train", data.train), ("val", data.val)):
            if runtime.distributed and not runtime.is_main:
                runtime.barrier()  # rank 0 extracts and writes the cache first
            features[split] = cached_features(model, samples, prep, runtime, cache_dir=cache_dir,
                                              batch_size=max(dc.batch_size, 64), workers=dc.workers,
                                              description=f"{split} features", log=log if runtime.is_main else _quiet)
            if runtime.distributed and runtime.is_main:
                runtime.barrier()
        generator = torch.Generator().manual_seed(tc.seed)
        train = DataLoader(TensorDataset(features["train"], torch.tensor(data.train.labels)),
                           batch_size=dc.batch_size, shuffle=True, generator=generator,
                           drop_last=_lone_last_batch(len(data.train), dc.batch_size))
        val = DataLoader(TensorDataset(features["val"], torch.tensor(data.val.labels)), batch_size=256)
        return StageData(train, val, model.head, lambda x: x.to(runtime.device, non_blocking=True), True)
    train_sampler = val_sampler = None
    if runtime.distributed:
        from torch.utils.data.distributed import DistributedSampler

        train_sampler = DistributedSampler(range(len(data.train)), runtime.world_size, runtime.rank,
                                           shuffle=True, seed=tc.seed)
        val_sampler = list(range(runtime.rank, len(data.val), runtime.world_size))  # no padding
    train = make_loader(data.train, train_transform(prep, augment), batch_size=dc.batch_size, shuffle=True,
                        workers=dc.workers, device=runtime.device, seed=tc.seed, sampler=train_sampler,
                        drop_last=_lone_last_batch(len(data.train), dc.batch_size))
    val = make_loader(data.val, eval_transform(prep), batch_size=dc.batch_size, shuffle=False,
                      workers=dc.workers, device=runtime.device, sampler=val_sampler)
    return StageData(train, val, model, runtime.to_device, False)


def _lone_last_batch(count: int, batch_size: int) -> bool:
    """Drop a last batch of one image: BatchNorm in train mode cannot normalise it."""
    return count > batch_size and count % batch_size == 1


def _quiet(_: str) -> None:
    pass


def _metrics_row(stage: Stage, index: int, epoch: int, progress: Progress, stats: dict, result,
                 optimizer: torch.optim.Optimizer, cached: bool) -> dict[str, Any]:
    lrs = {g.get("name", ""): g["lr"] for g in optimizer.param_groups}
    return {"stage": stage.name, "stage_epoch": epoch + 1, "epoch": len(progress.rows) + 1,
            "train_loss": stats["loss"], "train_top1": stats["top1"], "val_loss": result.loss,
            "val_top1": result.top1, "val_top5": result.top5, "lr_head": lrs.get("head", lrs.get("head_no_decay")),
            "lr_backbone": lrs.get("backbone", lrs.get("backbone_no_decay", "")), "seconds": 0.0,
            "images_per_s": stats.get("images_per_s", 0.0), "cached_features": cached}


def _save_epoch(run_dir: Path, model: Classifier, improved: bool, progress: Progress,
                optimizer, scheduler, scaler) -> None:
    raw_model = model
    if improved:
        checkpoint.save_model(run_dir, raw_model)
    checkpoint.save_model(run_dir, raw_model, checkpoint.LAST_FILE)
    run_folder.write_metrics(run_dir, progress.rows)
    checkpoint.save_train_state(run_dir, {
        "progress": vars(progress),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()},
    })


def _restore_training_state(state: dict[str, Any], optimizer, scheduler, scaler) -> None:
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    random.setstate(_as_tuple(rng["python"]))
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _summary(model: Classifier, data: DatasetSplits, config: RunConfig, progress: Progress) -> dict[str, Any]:
    return {
        "model": model.info.name, "weights": model.info.weights_id, "strategy": config.train.strategy,
        "val_top1": max(progress.best_top1, 0.0), "val_top5": progress.best_top5,
        "best_epoch": progress.best_epoch, "train_seconds": round(progress.train_seconds, 2),
        "stages": progress.stage_results, "num_classes": len(data.class_names),
        "class_names": list(data.class_names), "num_train": len(data.train), "num_val": len(data.val),
        "skipped_files": len(data.skipped), "epochs_completed": len(progress.rows),
    }
