"""The learning-rate finder (Smith 2017, "Cyclical Learning Rates"; fastai's `lr_find`).

Train for at most one epoch (at most 100 optimiser steps) while the LR rises exponentially from
1e-7 to 10, record the loss and its debiased exponential moving average (beta 0.98), stop once
that smoothed loss exceeds 4x its minimum, then put every weight (BatchNorm statistics included)
and every random-number generator back as they were. The suggestion is fastai's "valley": the
longest run of falling smoothed losses, int(length/3) + int(length/6) steps into it (fastai's
documentation says "2/3 of the way", its code steps about halfway in; this is its code).

As fastai's, the sweep is the training loop with one more callback, `LRFinder`: its batches are
trained as the stage trains them (mixup/cutmix, and with --accumulate N each step is an
optimiser step over N batches, its loss the group's). `find_stage_lr` runs it on a training
stage's model and data (what `tlearn train --lr find` and `tlearn lr-find` both use);
`write_finding` writes lr_find.csv and lr_find.png.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..config import RunConfig, TrainConfig
from ..errors import TrainingError
from ..files import atomic_write
from ..models import Classifier
from ..run_folder import records as run_folder
from ..run_folder import run_folder_writes
from ..runtime import Runtime
from ..task import Task
from ._events import Callback
from ._loop import Loop
from ._optim import make_optimizer
from .callbacks.accumulation import optimizer_steps
from .state import TrainState
from .strategy import parameter_groups

if TYPE_CHECKING:
    from .stage_data import StageData
    from .state import Progress

logger = logging.getLogger(__name__)

CSV_FILE, PLOT_FILE = "lr_find.csv", "lr_find.png"
RULE = "valley"
RULE_TEXT = "fastai's valley rule: about halfway into the longest falling stretch of the smoothed loss"


@dataclass(frozen=True)
class SweepSettings:
    """fastai's defaults (`Learner.lr_find`, `LRFinder`, `AvgSmoothLoss`)."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    max_steps: int = 100
    beta: float = 0.98  # smoothing of the loss
    diverge_factor: float = 4.0  # stop once the smoothed loss exceeds this x its minimum


@dataclass
class Finding:
    lrs: list[float]  # the head's LR at each step (a fine-tuned backbone ran at backbone_lr_mult x it)
    losses: list[float]
    smoothed: list[float]
    diverged: bool  # stopped early: the smoothed loss exceeded diverge_factor x its minimum
    suggestion: float
    suggestion_index: int

    def describe(self) -> str:
        return (f"suggested LR {self.suggestion:.2e} ({RULE_TEXT}); {len(self.lrs)} steps from {self.lrs[0]:.1e} "
                f"to {self.lrs[-1]:.1e}{', stopped when the loss diverged' if self.diverged else ''}")

    def record(self, stage: str) -> dict:
        """What the run folder's config.yaml and the resume state keep."""
        return {"lr": self.suggestion, "rule": RULE, "stage": stage, "steps": len(self.lrs),
                "swept": [self.lrs[0], self.lrs[-1]], "diverged": self.diverged}


class LRFinder(Callback):
    """The sweep on the training loop's events: each optimiser step's LR (the optimiser's groups keep
    their LR ratios: each is set to its initial LR x the swept one, so build them at LR 1), the
    step's loss (with --accumulate, its group's mean loss) and its smoothed value; stops the fit
    once the smoothed loss diverges or after `steps` optimiser steps (at most settings.max_steps).
    Under torchrun each process sees its own batches: their losses are averaged, so every process
    stops at the same step and suggests the same LR."""

    def __init__(self, steps: int, settings: SweepSettings = SweepSettings()) -> None:
        self.settings = settings
        self.steps = max(1, min(steps, settings.max_steps))
        self.growth = (settings.end_lr / settings.start_lr) ** (1.0 / max(self.steps - 1, 1))
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.ratios: list[float] = []
        self.average, self.best, self.diverged = 0.0, math.inf, False
        self.lr = self.group_loss = 0.0

    def before_fit(self, loop: Loop) -> None:
        self.ratios = [group["lr"] for group in loop.state.optimizer.param_groups]

    def after_loss(self, loop: Loop) -> None:
        value = loop.loss.detach().float()
        if loop.sharded and loop.runtime.distributed:
            value = loop.runtime.sum_across_processes(value) / loop.runtime.world_size
        value = value.item()
        if not math.isfinite(value):  # the LR has blown the weights up: as diverged as it gets
            self.diverged = loop.stop = True
            return
        self.group_loss += value * loop.micro.share  # the group's mean loss, as its backward pass sums it

    def before_step(self, loop: Loop) -> None:
        self.lr = self.settings.start_lr * self.growth ** len(self.lrs)
        for group, ratio in zip(loop.state.optimizer.param_groups, self.ratios):
            group["lr"] = self.lr * ratio

    def after_step(self, loop: Loop) -> None:
        settings, value = self.settings, self.group_loss
        self.group_loss = 0.0
        self.average = settings.beta * self.average + (1 - settings.beta) * value
        smooth = self.average / (1 - settings.beta ** (len(self.lrs) + 1))  # debiased, as fastai's AvgSmoothLoss
        self.lrs.append(self.lr), self.losses.append(value), self.smoothed.append(smooth)
        self.best = min(self.best, smooth)
        if smooth > settings.diverge_factor * self.best:
            self.diverged = loop.stop = True
        elif len(self.lrs) >= self.steps:
            loop.stop = True

    def finding(self) -> Finding:
        if not self.lrs:
            raise TrainingError("the LR finder got no finite loss: check the data and the model")
        index = valley(self.smoothed)
        return Finding(self.lrs, self.losses, self.smoothed, self.diverged, self.lrs[index], index)


def valley(losses: list[float]) -> int:
    """fastai's valley rule on a loss curve: the longest strictly falling subsequence, and the
    index int(length/3) + int(length/6) past its start (fastai's arithmetic, start estimate
    included). As fastai, the first tenth and the last 5 points are left out (the start is
    noise, the end is the blow-up) when the curve is long enough."""
    start, end = len(losses) // 10, len(losses) - 5
    if end - start < 3:
        start, end = 0, len(losses)
    part = losses[start:end]
    longest = [1] * len(part)  # longest falling subsequence ending at each point
    best_start = best_end = 0
    for i in range(1, len(part)):
        for j in range(i):
            if part[i] < part[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[best_end] < longest[i]:
            best_end = i
            best_start = max(0, best_end - longest[best_end])
    sections = (best_end - best_start) / 3
    return start + min(best_start + int(sections) + int(sections / 2), len(part) - 1)


@contextmanager
def preserved_state(model: nn.Module):
    """Weights, buffers and random-number generators as they were on entry, on exit: the sweep
    neither trains the model nor shifts the run's random stream (its reproducibility)."""
    weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        model.load_state_dict(weights)
        for parameter in model.parameters():
            parameter.grad = None
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def find_stage_lr(model: Classifier, stage_data: StageData, config: TrainConfig, runtime: Runtime,
                  loss_fn: Callable, *, aux_weight: float = 0.0, settings: SweepSettings = SweepSettings(),
                  callbacks: Sequence[Callback] = ()) -> Finding:
    """Sweep the LR on a stage's data (stage_data.StageData) as that stage would train: one epoch of
    the training loop (the cached features through the head, or images through the model, under
    torchrun through DDP) with the backbone at `backbone_lr_mult` x the head's LR, BatchNorm as in
    fine-tuning, and the stage's batch techniques, `callbacks` (callbacks.batch_techniques of the
    same settings: mixing, accumulation), before the LR finder's own."""
    unit = dataclasses.replace(config, lr=1.0)  # groups at 1 and backbone_lr_mult: the sweep scales them
    finder = LRFinder(optimizer_steps(len(stage_data.train), config.accumulate), settings)
    with preserved_state(model):
        optimizer = make_optimizer(parameter_groups(model, unit), unit)
        # no schedule (the finder sets each step's LR); the epoch's order follows the seed: a rerun finds the same LR
        loop = Loop(model, stage_data, TrainState(optimizer, None, runtime.grad_scaler()), runtime, loss_fn,
                    num_classes=model.info.num_classes, task=Task.of(model.info), config=config,
                    aux_weight=aux_weight, callbacks=[*callbacks, finder], name="LR finder")
        loop.fit(0, 1)
    return finder.finding()


def stage_lr_config(model: Classifier, stage_name: str, stage_data: StageData, config: RunConfig, runtime: Runtime,
                    progress: Progress, loss_fn: Callable, run_dir: Path | None,
                    callbacks: Sequence[Callback] = ()) -> TrainConfig:
    """The stage's training settings with --lr find's LR: swept now (with the stage's batch techniques,
    `callbacks`), or, in a resumed run, the one found before (state.Progress.lr_found: committed with
    every epoch). `run_dir`: where to write lr_find.csv/png and config.yaml's `resolved.lr_found`
    (None: not this process)."""
    tc = config.train
    if progress.lr_found is None:
        finding = find_stage_lr(model, stage_data, tc, runtime, loss_fn, aux_weight=config.model.aux_weight,
                                callbacks=callbacks)
        progress.lr_found = finding.record(stage_name)
        logger.info(f"LR finder: {finding.describe()}")
        if run_dir is not None:
            with run_folder_writes(run_dir, "the LR finder's results"):
                write_finding(finding, run_dir)
                run_folder.update_resolved(run_dir, lr_found=progress.lr_found)
    else:
        logger.info(f"--lr find: {progress.lr_found['lr']:.2e} by the {progress.lr_found['rule']} rule, found "
                    "before the resume (not swept again)")
    body = f"block groups x {tc.layer_decay:g}^depth" if tc.layer_decay else f"x {tc.backbone_lr_mult:g}"
    logger.info(f"stage {stage_name} trains at LR {progress.lr_found['lr']:.2e} (the head's; a trained backbone's "
                f"is {body}), found by the LR finder")
    return dataclasses.replace(tc, lr=progress.lr_found["lr"])


def stage_to_sweep(stages: list) -> int | None:
    """--lr find sweeps the last stage (fine-tuning in two-stage, after the probe), unless it is an
    L-BFGS solve, which has no LR."""
    if stages and stages[-1].solver != "lbfgs":
        return len(stages) - 1
    logger.info("--lr find: the last stage is an L-BFGS head solve, which has no LR; nothing to find "
                "(--head-solver sgd trains the head with an LR)")
    return None


def write_finding(finding: Finding, out_dir: str | Path) -> tuple[Path, Path]:
    """lr_find.csv (lr, loss, smoothed_loss per step) and lr_find.png (log LR axis, suggestion marked)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["lr", "loss", "smoothed_loss"])
    for row in zip(finding.lrs, finding.losses, finding.smoothed):
        writer.writerow([f"{value:.6g}" for value in row])
    atomic_write(out_dir / CSV_FILE, buffer.getvalue())
    atomic_write(out_dir / PLOT_FILE, _plot(finding))
    return out_dir / CSV_FILE, out_dir / PLOT_FILE


def _plot(finding: Finding) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(finding.lrs, finding.losses, color="0.75", linewidth=1, label="loss")
    axes.plot(finding.lrs, finding.smoothed, color="C0", label="smoothed loss")
    index = finding.suggestion_index
    axes.plot([finding.lrs[index]], [finding.smoothed[index]], "o", color="C3",
              label=f"suggestion {finding.suggestion:.2e} ({RULE})")
    axes.set_xscale("log")
    # The blow-up at the end would flatten the rest of the curve (fastai drops the last points).
    low, high = min(finding.smoothed + finding.losses), max(finding.smoothed[0], finding.losses[0])
    axes.set_ylim(low - 0.05 * (high - low), low + 1.5 * (high - low) if high > low else high + 1)
    axes.set_xlabel("learning rate (head)")
    axes.set_ylabel("training loss")
    axes.legend(loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
