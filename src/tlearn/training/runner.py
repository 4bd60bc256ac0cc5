"""The stage runner: run the strategy's stages, validate every epoch, commit the run folder.

Frozen stages without augmentation train the head on cached features (stage_data.py);
the checkpoint is the same full model either way. A stage's epochs run on the loop (loop.py)
with its techniques as callbacks (callbacks/), this module's EpochCommit among them: after
every epoch the run folder holds one committed, resumable state (state.py), written atomically.
An L-BFGS head solve is one epoch without the loop.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import LR_FIND, RunConfig, TrainConfig
from ..data import DatasetSplits, adapt_preprocessing
from ..features import HeadObjective, fit_linear_head_lbfgs, head_key, load_solved, run_cache_dir, store_solved
from ..metrics import EpochStats, EvalResult, MultiLabelResult, label_counts, warn_if_imbalanced
from ..models import Classifier
from ..models.block_groups import block_groups
from ..run_folder import checkpoint
from ..runtime import Runtime, seed_everything, setup_runtime
from ..task import Task
from ._balance import Balance
from ._events import Callback
from ._layer_groups import backbone_trains, log_block_groups, unfreeze_top
from ._loop import Loop, evaluate_loader
from ._optim import make_optimizer, make_scheduler
from ._precision import log_precision, measure_step_rates, stage_runtime
from .callbacks import (
    EarlyStopping,
    GradualUnfreezing,
    TensorBoard,
    TimeSplit,
    WeightAveraging,
    batch_techniques,
    mixes,
)
from .callbacks.accumulation import optimizer_steps
from .callbacks.ema import start_weight_average
from .callbacks.mixing import warn_if_ignored
from .callbacks.tracking import MlflowTracker
from .distillation import Distiller, start_distillation
from .lr_finder import stage_lr_config, stage_to_sweep
from .outputs import StagesResult, finish_stages, start_run_folder
from .pseudo_labels import PseudoLabels, PseudoTargets, PseudoWeightedLoss, start_pseudo_labels
from .stage_data import StageData, build_stage_data, cache_decoded_images
from .state import Progress, ResumePoint, TrainState, commit_epoch, repair_run_folder
from .strategy import Stage, parameter_counts, parameter_groups, plan_stages, trainable_names

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a stage needs besides the model and the stage itself."""

    config: RunConfig
    data: DatasetSplits
    runtime: Runtime
    run_dir: Path | None
    progress: Progress
    cache_dir: Path | None
    balance: Balance
    tensorboard: TensorBoard | None = None  # --tensorboard, where this process writes the run folder
    tracker: MlflowTracker | None = None  # --track mlflow, likewise
    # The validation features of a stage on cached features, and the epochs trained on them:
    # when the best epoch is one of those, the report needs only the best head on them.
    val_features: torch.Tensor | None = None
    feature_epochs: set[int] = field(default_factory=set)
    # The best epoch's validation probabilities, when that epoch ran in this process and this
    # process saw every validation image: the report then needs no pass of its own.
    best_val_probs: torch.Tensor | None = None
    lr_stage: int | None = None  # --lr find: the stage whose LR the finder picks
    distiller: Distiller | None = None  # a distillation run: the teacher (distillation.py)
    pseudo: PseudoLabels | None = None  # train --unlabeled: the pseudo-labelled images (pseudo_labels.py)

    @property
    def writes(self) -> bool:
        return self.run_dir is not None and self.runtime.is_main


@dataclass
class StageRun:
    """One stage under way: its model, data and optimiser state, and the clock of its epoch."""

    model: Classifier
    stage: Stage
    data: StageData
    state: TrainState | None  # None for an L-BFGS solve
    mark: float  # when the current epoch (or solve) started, feature extraction included
    runtime: Runtime | None = None  # the stage's precision (--amp auto); None: the run's


def run_stages(model: Classifier, data: DatasetSplits, config: RunConfig, run_dir: str | Path | None = None,
               *, runtime: Runtime | None = None, resume: ResumePoint | None = None) -> StagesResult:
    """Train `model` on `data` by `config`'s strategy; returns the summary and what the run's end
    needs (the api then calibrates, writes summary.json and the report)."""
    tc, task = config.train, Task.of(config)
    task.check_config(config)
    if tc.patience:
        task.require_monitor(tc.monitor)
    runtime = runtime or setup_runtime(tc.device, tc.amp, tc.amp_dtype, tc.channels_last)
    log_precision(runtime, tc.amp)
    seed_everything(tc.seed, tc.deterministic)
    model.info.class_names = list(data.class_names)
    if task.multi_label:  # images per class; balancing is single-label only (Task.check_config)
        model.info.task, model.info.label_delim = task.name, config.data.label_delim
        balance = Balance("none", tuple(label_counts(data.train.labels, len(data.class_names))), tc.balance_tau)
    else:
        balance = Balance.from_labels(tc.balance, data.train.labels, len(data.class_names), tc.balance_tau)
        warn_if_imbalanced(balance.counts, data.class_names, "the training split")
    model.info.balance = balance.to_dict()
    progress = resume.progress if resume else Progress()
    if resume is None:  # a resumed run keeps the preprocessing and the flags it started with
        model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, data.train,
                                                       config.data.small_images)
        if tc.strategy == "as-is":
            progress.as_is_trainable = list(trainable_names(model))
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    cache_dir = run_cache_dir(tc.cache_dir, tc.use_cache)
    distiller = None
    if config.distill is not None:  # the balance above counts the labelled images alone
        distiller, data = start_distillation(config, data, model, runtime, cache_dir)
    run = Run(config, data, runtime, Path(run_dir) if run_dir is not None else None, progress, cache_dir, balance,
              distiller=distiller)
    if tc.pseudo_unlabeled:  # the balance above counts the labelled images alone
        run.pseudo = start_pseudo_labels(config, data, model, runtime, cache_dir, run.run_dir, resume is not None)
    if run.writes and resume is None:
        start_run_folder(run, model)
        if run.pseudo is not None:
            run.pseudo.save(run.run_dir, tc.pseudo_unlabeled)
    if run.writes and resume is not None:
        repair_run_folder(run.run_dir, resume)
    if run.writes and tc.tensorboard:
        run.tensorboard = TensorBoard(run.run_dir, progress)
    if run.writes and tc.track == "mlflow":
        run.tracker = MlflowTracker.for_run(run.run_dir, progress, resumed=resume is not None)
    stages = plan_stages(config, model, tuple(progress.as_is_trainable))
    run.lr_stage = stage_to_sweep(stages) if tc.lr == LR_FIND else None
    if run.cache_dir is not None and not all(stage.on_features for stage in stages):
        run.data = cache_decoded_images(run.data, model.info.preprocessing, config.data, runtime, run.cache_dir)
    start, stage_state = progress.stage_index, None
    if resume is not None:
        resume.restore_rng()
        stage_state = resume.stage_state
        if len(progress.stage_results) > start:  # committed at a stage's end (its last epoch, or stopped early)
            start, progress.stage_epoch, stage_state = start + 1, 0, None
    elif stages:
        _note_changed_flags(model, stages[0])
    try:
        for index in range(start, len(stages)):
            progress.stage_index = index
            _run_stage(model, stages[index], index, run, stage_state)
            stage_state, progress.stage_epoch = None, 0
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
    return finish_stages(model, run)


def _note_changed_flags(model: Classifier, stage: Stage) -> None:
    """The user froze parts of the model themselves and the strategy is about to redo it: say so."""
    before = trainable_names(model)
    if stage.trains == "as-is" or len(before) == len(list(model.parameters())):
        return
    given = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stage.apply(model)
    if trainable_names(model) != before:
        logger.info(f"note: strategy {stage.name} sets which parameters train ({given:,} trainable as given, "
                    f"{parameter_counts(model)[0]:,} now); strategy='as-is' keeps the model's own flags")


def _run_stage(model: Classifier, stage: Stage, index: int, run: Run, stage_state: dict | None) -> None:
    tc, runtime = run.config.train, run.runtime
    mark = time.perf_counter()
    stage.apply(model)
    trainable, frozen = parameter_counts(model)
    stage_data = build_stage_data(model, stage, run.data, run.config, runtime, run.cache_dir, run.distiller,
                                  run.pseudo)
    if stage_data.cached:
        run.val_features = stage_data.val.dataset.tensors[0]
        warn_if_ignored(run.config, stage.name)
    how = {"lbfgs": ", L-BFGS head on cached features", "sgd": ", head on cached features"}
    logger.info(f"stage {index + 1} {stage.name}: {stage.epochs} epoch{'s' if stage.epochs != 1 else ''}, "
                f"trainable params {trainable:,}, frozen params {frozen:,}"
                + (how[stage.solver] if stage.on_features else "")
                + (", unfrozen gradually" if stage.gradual else ""))
    if stage.solver == "lbfgs":
        if tc.ema_decay is not None:
            logger.info("  --ema-decay: an L-BFGS head solve has no steps to average; no EMA in this stage")
        _solve_head(StageRun(model, stage, stage_data, None, mark), run)
        return
    runtime = _stage_precision(model, stage_data, index, run)
    if index == run.lr_stage:  # --lr find
        tc = _find_lr(model, stage, stage_data, run, runtime)
    if backbone_trains(model):  # after the LR finder: the groups' LRs follow the LR it found
        log_block_groups(block_groups(model), tc)
    optimizer = make_optimizer(parameter_groups(model, tc), tc)
    steps = optimizer_steps(len(stage_data.train), tc.accumulate)
    scheduler = make_scheduler(optimizer, stage.epochs * steps, int(round(tc.warmup_epochs * steps)))
    state = TrainState(optimizer, scheduler, runtime.grad_scaler(),
                       start_weight_average(model, stage_data.module, tc.ema_decay))
    if stage_state is not None:
        state.load_state_dict(stage_state)
    _train_epochs(StageRun(model, stage, stage_data, state, mark, runtime), run)


def _stage_precision(model: Classifier, stage_data: StageData, index: int, run: Run) -> Runtime:
    """--amp auto: the stage's precision, timed on its first batch (_precision.py); else the run's."""
    def measure() -> dict[str, float]:
        inputs, targets = next(iter(stage_data.train))
        # distill --unlabeled marks images without a label -1; the timed steps (thrown away) need a valid one
        # --unlabeled marks pseudo-labels class + num_classes (pseudo_labels.py)
        targets = targets if run.pseudo is None else run.pseudo.decode(targets)[0]
        batch = stage_data.prepare(inputs), targets.clamp(min=0).to(run.runtime.device)
        return measure_step_rates(model, batch, _training_loss(run, stage_data, model, []), run.runtime,
                                  run.config.train, run.config.model.aux_weight)

    return stage_runtime(run.runtime, run.config.train, run.progress.precisions, str(index),
                         None if stage_data.cached else measure)


def _find_lr(model: Classifier, stage: Stage, stage_data: StageData, run: Run, runtime: Runtime) -> TrainConfig:
    """--lr find: the stage's settings at the LR the finder picks. The sweep trains what the stage's
    first epoch trains (under --unfreeze gradual: the head and the top block group), as it trains it
    (the batch techniques: mixing, accumulation)."""
    if stage.gradual:
        unfreeze_top(model, block_groups(model), 1)
    techniques = batch_techniques(run.config, Task.of(model.info), model.info.num_classes, stage_data.cached)
    found = stage_lr_config(model, stage.name, stage_data, run.config, runtime, run.progress,
                            _training_loss(run, stage_data, model, techniques), run.run_dir if run.writes else None,
                            techniques)
    if stage.gradual:
        stage.apply(model)  # the optimiser holds every parameter; each epoch then sets what trains
    return found


def _training_loss(run: Run, stage_data: StageData, model: Classifier, techniques: list[Callback]) -> nn.Module:
    """The stage's loss: balanced as --balance says, with --label-smoothing unless the batches are mixed
    (the mixer's soft targets carry it)."""
    if Task.of(model.info).multi_label:
        return nn.BCEWithLogitsLoss()
    smoothing = 0.0 if mixes(techniques) else run.config.train.label_smoothing
    return run.balance.training_loss(smoothing, run.runtime.device, sampled=stage_data.balanced_sampler)


def _train_epochs(current: StageRun, run: Run) -> None:
    """The stage's epochs on the loop, its techniques as callbacks. Their order matters where two act
    on one event: early stopping decides before the EMA hands over its average at the stage's end,
    the commit comes before TensorBoard, and the time split comes last."""
    model, stage, stage_data, state = current.model, current.stage, current.data, current.state
    tc, task = run.config.train, Task.of(model.info)
    techniques = batch_techniques(run.config, task, model.info.num_classes, stage_data.cached)
    callbacks = [GradualUnfreezing(model)] if stage.gradual else []
    callbacks += techniques
    loss = _training_loss(run, stage_data, model, techniques)
    if run.distiller is not None:  # after mixing: the teacher sees the images the student sees
        teacher = run.distiller.callback(stage_data.cached)
        callbacks.append(teacher)
        loss = run.distiller.loss(loss, teacher)
    if run.pseudo is not None:  # first: every other callback sees the classes, not their encoding
        pseudo_targets = PseudoTargets(run.pseudo)
        callbacks.insert(0, pseudo_targets)
        loss = PseudoWeightedLoss(loss, pseudo_targets, run.pseudo.weight)
    if tc.patience:
        callbacks.append(EarlyStopping(tc, task, run.progress, stage.name))
    if state.ema is not None:
        callbacks.append(WeightAveraging(state.ema))
    callbacks.append(EpochCommit(current, run))
    if run.tensorboard is not None:
        callbacks.append(run.tensorboard)
    if run.tracker is not None:
        callbacks.append(run.tracker)
    callbacks.append(TimeSplit())
    loop = Loop(model, stage_data, state, current.runtime or run.runtime, loss,
                num_classes=model.info.num_classes, task=task, config=tc, aux_weight=run.config.model.aux_weight,
                callbacks=callbacks, name=stage.name)
    loop.fit(run.progress.stage_epoch, stage.epochs)


class EpochCommit(Callback):
    """The runner's own part of each epoch's end: the metrics row, the best epoch, the commit."""

    def __init__(self, current: StageRun, run: Run) -> None:
        self.current, self.run = current, run

    def after_epoch(self, loop: Loop) -> None:
        _finish_epoch(self.current, loop.stats, loop.result, self.run, stopped=loop.stop)


def _solve_head(current: StageRun, run: Run) -> None:
    """One full-batch solve is the stage's one epoch: the head is a convex problem on fixed features."""
    model, stage_data = current.model, current.data
    train_x, train_y = stage_data.train.dataset.tensors
    val_x, val_y = stage_data.val.dataset.tensors
    began = time.perf_counter()
    balance, task = run.balance, Task.of(model.info)
    sample_weights = None
    if run.pseudo is not None:
        train_y, pseudo = run.pseudo.decode(train_y)
        sample_weights = run.pseudo.row_weights(pseudo)
    objective = HeadObjective(balance.loss_weights(), balance.logit_shift(),
                              "map" if task.multi_label else "balanced_acc" if balance.active else "top1",
                              task.multi_label, sample_weights)
    key = head_key(train_x, train_y, val_x, val_y, objective)
    solved = load_solved(model.head, run.cache_dir, key)
    if solved is None:
        solved = fit_linear_head_lbfgs(model.head, train_x, train_y, val_x, val_y, objective=objective)
        if run.runtime.is_main:
            store_solved(model.head, solved, run.cache_dir, key)
    solved_at = time.perf_counter()
    eval_loss = task.eval_loss(run.config.train.label_smoothing)
    result = evaluate_loader(model.head, stage_data.val, run.runtime, model.info.num_classes, eval_loss,
                             prepare=stage_data.prepare, description="val", sharded=False, keep_probs=True, task=task)
    logger.info(f"  L-BFGS head: l2 {solved.l2:g}, val {task.describe(result)}")
    stats = EpochStats(solved.train_loss, solved.train_top1, compute_seconds=solved_at - began)
    stats.eval_seconds = time.perf_counter() - solved_at
    _finish_epoch(current, stats, result, run, stopped=False)  # early stopping has no say over the one solve
    if run.tensorboard is not None:  # a solve has no loop: its row goes to TensorBoard from here
        run.tensorboard.write(run.progress.rows[-1])
    if run.tracker is not None:
        run.tracker.write_rows()


def _finish_epoch(current: StageRun, stats: EpochStats, result: EvalResult | MultiLabelResult, run: Run,
                  stopped: bool) -> None:
    """Record the epoch's metrics, track the best model, commit the run folder (`stopped`: early
    stopping ended the stage after this epoch)."""
    progress, stage, model, task = run.progress, current.stage, current.model, Task.of(current.model.info)
    now = time.perf_counter()
    progress.train_seconds += now - current.mark  # includes feature extraction and validation
    progress.stage_epoch += 1
    lrs = {g.get("name", ""): g["lr"] for g in current.state.optimizer.param_groups} if current.state else {}
    row = {"stage": stage.name, "stage_epoch": progress.stage_epoch, "epoch": len(progress.rows) + 1,
           **task.train_fields(stats.loss, stats.top1), "val_loss": result.loss, **task.result_fields(result),
           "lr_head": lrs.get("head", lrs.get("head_no_decay", "")),
           "lr_backbone": next((lr for name, lr in lrs.items() if name.startswith("backbone")), ""),  # the top group
           "trainable_params": parameter_counts(model)[0],
           "seconds": now - current.mark, "images_per_s": stats.images_per_s, "cached_features": current.data.cached,
           "data_seconds": stats.data_seconds, "compute_seconds": stats.compute_seconds,
           "optimizer_seconds": stats.optimizer_seconds, "eval_seconds": stats.eval_seconds}
    progress.rows.append(row)
    if current.data.cached:
        run.feature_epochs.add(row["epoch"])
    score = task.selection_score(result, run.balance.active)  # balancing aims at every class
    improved = score > progress.best_score
    if improved:
        progress.best_score, progress.best_epoch = score, row["epoch"]
        if task.multi_label:
            progress.best_values, progress.best_thresholds = task.result_fields(result), list(result.thresholds)
        else:
            progress.best_top1, progress.best_top5 = result.top1, result.top5
            progress.best_balanced_acc, progress.best_f1_macro = result.balanced_acc, result.f1_macro
        run.best_val_probs = result.probs
    if progress.stage_epoch == stage.epochs or stopped:  # (the EMA has handed its average to the model)
        trainable, frozen = parameter_counts(model)
        progress.stage_results.append({"name": stage.name, "epochs": progress.stage_epoch, "stopped_early": stopped,
                                       **task.result_fields(result), "trainable_params": trainable,
                                       "frozen_params": frozen, "cached_features": current.data.cached,
                                       "solver": stage.solver})
    if run.writes:
        commit_epoch(run.run_dir, model, progress, current.state, improved)
        if improved and task.multi_label:  # model.json's thresholds follow model.safetensors
            model.info.thresholds = list(progress.best_thresholds)
            checkpoint.save_model_info(run.run_dir, model.info)
    current.mark = time.perf_counter()
