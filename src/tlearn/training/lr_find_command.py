"""`tlearn lr-find`: the LR finder on a fresh model, without a training run.

The model is built as `tlearn train` would build it (weights, new head, preprocessing adapted to
small images), the stage is the strategy's (finetune: everything, backbone at
`backbone_lr_mult` x the LR; linear-probe: the head on cached features), and the sweep is
lr_finder.py's: the training loop with the stage's batch techniques (mixing, accumulation, as
the settings ask for them). Nothing is trained: the weights are restored after the sweep.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..data import adapt_preprocessing, load_data
from ..errors import DataError
from ..features import run_cache_dir
from ..models import create_model
from ..runtime import Runtime, seed_everything, setup_runtime
from ..task import Task
from ._balance import Balance
from ._precision import measure_step_rates, stage_runtime
from .callbacks import batch_techniques, mixes
from .lr_finder import Finding, find_stage_lr, write_finding
from .stage_data import StageData, build_stage_data
from .strategy import plan_stages

STRATEGIES = ("finetune", "linear-probe")


def lr_find(config: RunConfig, out_dir: str | Path) -> Finding:
    """Sweep the LR for `config`'s data, model and strategy; writes lr_find.csv and lr_find.png
    into `out_dir` and returns the finding (its `suggestion` is the LR to train with)."""
    tc = config.train
    if tc.strategy not in STRATEGIES:
        from ..errors import ConfigError

        raise ConfigError(f"lr-find --strategy must be one of {', '.join(STRATEGIES)}; got {tc.strategy!r}")
    task = Task.of(config)
    task.check_config(config)
    data = load_data(config.data, tc.seed)
    if len(data.class_names) < task.min_classes:
        raise DataError(f"need at least 2 classes, found {len(data.class_names)}")
    runtime = setup_runtime(tc.device, tc.amp, tc.amp_dtype, tc.channels_last)
    seed_everything(tc.seed, tc.deterministic)
    model = create_model(config.model.name, len(data.class_names), config.model.weights,
                         aux_logits=config.model.aux_weight > 0, image_size=config.data.image_size)
    model.info.class_names = list(data.class_names)
    model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, data.train, config.data.small_images)
    model.info.task = task.name
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    # The head's stage is a mini-batch one here: L-BFGS has no LR to find.
    sgd = dataclasses.replace(config, train=dataclasses.replace(tc, head_solver="sgd", head_epochs=0))
    stage = plan_stages(sgd, model)[-1]
    stage.apply(model)
    cache_dir = run_cache_dir(tc.cache_dir, tc.use_cache)
    stage_data = build_stage_data(model, stage, data, sgd, runtime, cache_dir)
    techniques = batch_techniques(config, task, len(data.class_names), stage_data.cached)
    if task.multi_label:
        loss_fn = nn.BCEWithLogitsLoss()
    else:
        smoothing = 0.0 if mixes(techniques) else tc.label_smoothing  # the mixer's soft targets carry it
        balance = Balance.from_labels(tc.balance, data.train.labels, len(data.class_names), tc.balance_tau)
        loss_fn = balance.training_loss(smoothing, runtime.device, sampled=stage_data.balanced_sampler)
    runtime = _sweep_precision(model, stage_data, sgd, runtime, loss_fn)
    finding = find_stage_lr(model, stage_data, tc, runtime, loss_fn, aux_weight=config.model.aux_weight,
                            callbacks=techniques)
    if runtime.is_main:
        write_finding(finding, out_dir)
    return finding


def _sweep_precision(model: nn.Module, stage_data: StageData, config: RunConfig, runtime: Runtime,
                     loss_fn: nn.Module) -> Runtime:
    """--amp auto: the sweep's precision, timed on its first batch as a training stage times its own
    (_precision.py), since the sweep's steps are that stage's steps; on cached features, fp32."""
    def measure() -> dict[str, float]:
        inputs, targets = next(iter(stage_data.train))
        batch = stage_data.prepare(inputs), targets.clamp(min=0).to(runtime.device)
        return measure_step_rates(model, batch, loss_fn, runtime, config.train, config.model.aux_weight)

    return stage_runtime(runtime, config.train, {}, "lr-find", None if stage_data.cached else measure)
