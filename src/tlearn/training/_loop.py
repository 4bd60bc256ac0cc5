"""The loop: a stage's epochs of batches with events around each step, and `evaluate_loader`.

`Loop.fit` runs a stage's epochs (train, then validate), `Loop.train_epoch` one pass over the
batches. The loop itself only moves a batch to the device, computes the loss, back-propagates
and steps; every technique (mixing, accumulation, EMA, gradual unfreezing, early stopping, the
time split, TensorBoard, the LR finder) is a callback on the events of events.py, in callbacks/
and lr_finder.py. The runner's own epoch end (the metrics row and the commit) is one too.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from ..config import TrainConfig
from ..errors import TrainingError
from ..metrics import EpochStats, EvalResult, MultiLabelResult
from ..models import AuxOutput
from ..runtime import Runtime
from ..task import SINGLE_LABEL_TASK, Task
from ._events import Callback, MicroBatch
from .strategy import set_train_mode

if TYPE_CHECKING:
    from .stage_data import StageData
    from .state import TrainState

logger = logging.getLogger(__name__)

WHOLE_BATCH = MicroBatch(share=1.0, last=True)  # without accumulation, every batch is a group of its own


def compute_loss(output, targets: torch.Tensor, loss_fn: Callable,
                 aux_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits). Inception/GoogLeNet add their auxiliary losses x aux_weight."""
    if isinstance(output, AuxOutput):
        loss = loss_fn(output.logits, targets)
        if aux_weight > 0:
            loss = loss + aux_weight * sum(loss_fn(aux, targets) for aux in output.aux)
        return loss, output.logits
    return loss_fn(output, targets), output


class Loop:
    """A stage's training on `data` (stage_data.StageData) with `state`'s optimiser, schedule and
    grad scaler; `callbacks` act on the events, in the list's order.

    `model` is what `fit` sets in train mode (the classifier); the batches go through `module`
    (the classifier, its head on cached features, or a DDP wrapper). `config`: the seed of each
    epoch's order, `bn_train`, `detect_anomaly` and validation's label smoothing.
    """

    def __init__(self, model: nn.Module, data: StageData, state: TrainState, runtime: Runtime, loss_fn: Callable,
                 *, num_classes: int, task: Task = SINGLE_LABEL_TASK, config: TrainConfig | None = None,
                 aux_weight: float = 0.0, callbacks: Sequence[Callback] = (), name: str = "train") -> None:
        self.model, self.data, self.state, self.runtime, self.loss_fn = model, data, state, runtime, loss_fn
        self.num_classes, self.task, self.aux_weight = num_classes, task, aux_weight
        self.config = config if config is not None else TrainConfig()
        self.callbacks, self.name = list(callbacks), name
        self.sharded = not data.cached  # each torchrun process saw its own images: sum the metrics
        self.module = self.train_module()
        self.validated: nn.Module = data.module  # what validation runs (the EMA puts its average here)
        # The fit: which epochs, and how the last one went.
        self.first_epoch = self.epoch = self.epochs = 0
        self.stop = False  # a callback ends the fit (events.py)
        self.stats = EpochStats(0.0, 0.0)
        self.result: EvalResult | MultiLabelResult | None = None
        # The batch: what the callbacks read and write.
        self.batches: Iterable = ()
        self.batch_index = 0
        self.micro = WHOLE_BATCH
        self.inputs = self.targets = self.counted = None  # counted: what the training figure counts
        self.loss = self.backward_loss = self.logits = None
        self.skip_step = False
        self._held: contextlib.ExitStack | None = None  # what callbacks hold until the batch's backward pass

    def call(self, event: str) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self)

    def hold(self, context: contextlib.AbstractContextManager) -> None:
        """Enter `context` until this batch's backward pass is done (DDP's no_sync must hold the forward too)."""
        self._held.enter_context(context)

    @property
    def last_epoch(self) -> bool:
        """This epoch is the stage's last planned one."""
        return self.epoch + 1 == self.epochs

    def train_module(self) -> nn.Module:
        """What the batches go through: under torchrun, images train through DDP. Built again when what
        trains changes (gradual unfreezing): DDP syncs only what trained when it was built."""
        if self.runtime.distributed and not self.data.cached:
            return nn.parallel.DistributedDataParallel(self.model,
                                                       find_unused_parameters=bool(self.model.info.aux_modules))
        return self.data.module

    def fit(self, first_epoch: int, epochs: int) -> None:
        """Epochs `first_epoch` to `epochs` - 1 of a stage (a resumed stage starts after its last commit):
        each trains, then validates, unless a callback stops the fit."""
        self.first_epoch, self.epochs, self.stop = first_epoch, epochs, False
        self.call("before_fit")
        for epoch in range(first_epoch, epochs):
            self.epoch = epoch
            self.data.start_epoch(self.config.seed, epoch)  # the epoch's order depends on (seed, epoch) alone
            self.call("before_epoch")
            set_train_mode(self.model, self.config.bn_train)  # after what trains is set: frozen BatchNorm evaluates
            with torch.autograd.set_detect_anomaly(self.config.detect_anomaly):
                self.train_epoch()
            if self.stop:  # stopped during the batches (the LR finder): nothing to validate
                return
            self.result = self.validate()
            self.call("after_validate")
            self.call("after_epoch")
            if self.stop:
                return

    def train_epoch(self) -> EpochStats:
        """One pass over the training batches; the LR schedule steps per optimiser step. Returns the
        loss, the training figure (top-1, or micro F1 at 0.5 for multi-label data) and images/s; the
        time split (callbacks/timing.py) adds where the time went."""
        meter = self.task.train_meter(self.num_classes)
        self.stats, start, seen = EpochStats(0.0, 0.0), time.perf_counter(), 0
        progress = tqdm(self.data.train, desc=self.description, leave=False,
                        disable=None if self.runtime.is_main else True, dynamic_ncols=True)
        self.batches, self.micro = progress, WHOLE_BATCH
        self.state.optimizer.zero_grad(set_to_none=True)
        self.call("before_train")
        try:
            for index, (inputs, targets) in enumerate(self.batches):
                self.batch_index = index
                if not self.train_batch(inputs, targets):
                    break
                meter.update(self.logits, self.counted, self.loss.item())
                seen += len(self.targets)
                if progress.disable is False and self.batch_index % 5 == 0:
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    progress.set_postfix(loss=f"{self.loss.item():.3f}", acc=f"{meter.result().top1:.3f}",
                                         img_s=f"{rate:.0f}")
                if self.stop:
                    break
        finally:
            progress.close()
            self.batches = ()  # the wrapped batches hold the loop: let both go when the fit ends
        processes = self.runtime.world_size if self.sharded else 1
        if self.sharded:
            meter.reduce(self.runtime)
        figures = meter.result()
        self.stats.seconds = time.perf_counter() - start
        self.stats.loss, self.stats.top1 = figures.loss, figures.top1
        self.stats.images_per_s = seen * processes / max(self.stats.seconds, 1e-9)
        return self.stats

    def train_batch(self, inputs: Any, targets: torch.Tensor) -> bool:
        """Forward, loss, backward and, unless a callback cancels it, the optimiser step; False when a
        callback stopped the fit before the backward pass."""
        self.inputs = self.data.prepare(inputs)
        self.targets = self.counted = targets.to(self.runtime.device, non_blocking=True)
        self.skip_step = False
        with contextlib.ExitStack() as self._held:
            self.call("before_batch")
            with self.runtime.autocast():
                self.loss, self.logits = compute_loss(self.module(self.inputs), self.targets, self.loss_fn,
                                                      self.aux_weight)
            self.call("after_loss")
            if self.stop:
                return False
            if not math.isfinite(self.loss.item()):
                raise TrainingError(f"non-finite loss ({self.loss.item()}) in {self.description}, step "
                                    f"{self.batch_index + 1}; the last good checkpoint is kept; try a lower --lr")
            self.backward_loss = self.loss
            self.call("before_backward")
            scaler = self.state.scaler
            if scaler is not None and scaler.is_enabled():
                scaler.scale(self.backward_loss).backward()
            else:
                self.backward_loss.backward()
            self.call("after_backward")
        if not self.skip_step:
            self.optimizer_step()
        return True

    def optimizer_step(self) -> None:
        """One optimiser and one schedule step (the sweep has no schedule); the gradients go after it."""
        self.call("before_step")
        optimizer, scaler = self.state.optimizer, self.state.scaler
        if scaler is not None and scaler.is_enabled():
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if self.state.scheduler is not None:
            self.state.scheduler.step()
        self.call("after_step")
        optimizer.zero_grad(set_to_none=True)

    def validate(self) -> EvalResult | MultiLabelResult:
        """The epoch's validation of `validated` (eval mode), and its log line."""
        began = time.perf_counter()
        result = evaluate_loader(self.validated, self.data.val, self.runtime, self.num_classes,
                                 self.task.eval_loss(self.config.label_smoothing), prepare=self.data.prepare,
                                 description="val", sharded=self.sharded,
                                 keep_probs=self.data.cached or not self.runtime.distributed, task=self.task)
        self.stats.eval_seconds = time.perf_counter() - began
        stats = self.stats
        logger.info(f"  epoch {self.epoch + 1}/{self.epochs}: train loss {stats.loss:.4f} "
                    f"{self.task.train_figure_name} {stats.top1:.4f} | val loss {result.loss:.4f} "
                    f"{self.task.describe(result)} | {stats.images_per_s:.0f} img/s")
        return result

    @property
    def description(self) -> str:
        return f"{self.name} epoch {self.epoch + 1}/{self.epochs}" if self.epochs else self.name


@torch.inference_mode()
def evaluate_loader(model: nn.Module, loader: Iterable, runtime: Runtime, num_classes: int,
                    loss_fn: Callable | None = None, prepare: Callable | None = None,
                    description: str = "eval", sharded: bool = True, keep_probs: bool = False,
                    task: Task = SINGLE_LABEL_TASK) -> EvalResult | MultiLabelResult:
    """Top-1/top-5, per-class accuracy and confusion over `loader` (model in eval mode); with
    `keep_probs`, the softmax of every sample too, in loader order (this process's only).
    Multi-label: mAP and F1 at thresholds chosen on these images (always keeps the sigmoid
    probabilities: mAP needs them; under torchrun they are gathered)."""
    prepare = prepare or runtime.to_device
    model.eval()  # the caller sets the training mode again (see strategy.set_train_mode)
    loss_fn = loss_fn or task.eval_loss()
    meter = task.eval_meter(num_classes, keep_probs)
    for inputs, targets in tqdm(loader, desc=description, leave=False,
                                disable=None if runtime.is_main else True, dynamic_ncols=True):
        inputs, targets = prepare(inputs), targets.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(inputs)
        meter.update(logits, targets, loss_fn(logits.float(), targets).item())
    if sharded:  # each process evaluated its own shard, unpadded: the sums are exact
        meter.reduce(runtime)
    return meter.result()
