"""The loops: `train_one_epoch` and `evaluate`, plain functions read top to bottom."""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from .accumulation import gradient_sync, micro_batches
from ..errors import TrainingError
from ..metrics.classification import ClassificationMeter, EpochStats, EvalResult
from ..models.classifier import AuxOutput
from ..metrics.multilabel import MultiLabelMeter, MultiLabelResult, TrainMeter
from ..runtime import Runtime


def compute_loss(output, targets: torch.Tensor, loss_fn: Callable,
                 aux_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, main logits). Inception/GoogLeNet add their auxiliary losses x aux_weight."""
    if isinstance(output, AuxOutput):
        loss = loss_fn(output.logits, targets)
        if aux_weight > 0:
            loss = loss + aux_weight * sum(loss_fn(aux, targets) for aux in output.aux)
        return loss, output.logits
    return loss_fn(output, targets), output


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler, runtime: Runtime, loss_fn: Callable, *, num_classes: int,
                    scaler: torch.amp.GradScaler | None = None, aux_weight: float = 0.0,
                    description: str = "train", prepare: Callable | None = None, sharded: bool = True,
                    multi_label: bool = False, mix: Callable | None = None, accumulate: int = 1,
                    after_step: Callable[[], None] | None = None) -> EpochStats:
    """One pass over `loader`; the LR schedule steps per optimiser step. Returns loss, top1, images/s and
    where the time went: waiting for data, forward + backward, the optimiser step (on CUDA the
    split is approximate: kernels run asynchronously).

    `prepare(batch_inputs)` moves inputs to the device; images by default, features too.
    `sharded`: each torchrun process saw a different part of the data (sum the metrics).
    `multi_label`: multi-hot targets; "top1" is then micro F1 at 0.5 (multilabel.py).
    `mix(inputs, targets)`: mixup/cutmix (mixing.py) -> inputs, soft targets, targets to count.
    `accumulate`: micro-batches per optimiser step (accumulation.py); `after_step()` runs after each
    optimiser step (the EMA's update, ema.py).
    """
    prepare = prepare or runtime.to_device
    meter = TrainMeter(num_classes) if multi_label else ClassificationMeter(num_classes)
    start, seen = time.perf_counter(), 0
    waited = computed = stepped = 0.0
    progress = tqdm(loader, desc=description, leave=False, disable=None if runtime.is_main else True,
                    dynamic_ncols=True)
    mark = time.perf_counter()
    for step, (inputs, targets, micro) in enumerate(micro_batches(progress, accumulate)):
        began = time.perf_counter()
        waited += began - mark
        inputs, targets = prepare(inputs), targets.to(runtime.device, non_blocking=True)
        counted = targets
        if mix is not None:
            inputs, targets, counted = mix(inputs, targets)
        scaled = scaler is not None and scaler.is_enabled()
        if micro.first:
            optimizer.zero_grad(set_to_none=True)
        # DDP decides in the forward pass whether the backward all-reduces: both go inside no_sync
        with gradient_sync(model, micro):
            with runtime.autocast():
                loss, logits = compute_loss(model(inputs), targets, loss_fn, aux_weight)
            if not math.isfinite(loss.item()):
                raise TrainingError(f"non-finite loss ({loss.item()}) in {description}, step {step + 1}; "
                                    "the last good checkpoint is kept; try a lower --lr")
            weighted = loss if micro.share == 1 else loss * micro.share  # the group's mean loss, summed
            (scaler.scale(weighted) if scaled else weighted).backward()
        backward_done = time.perf_counter()
        computed += backward_done - began
        if micro.last:
            _optimizer_step(optimizer, scheduler, scaler if scaled else None, after_step)
        stepped += time.perf_counter() - backward_done
        meter.update(logits, counted, loss.item())
        seen += len(targets)
        if progress.disable is False and step % 5 == 0:
            rate = seen / max(time.perf_counter() - start, 1e-9)
            progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{meter.result().top1:.3f}", img_s=f"{rate:.0f}")
        mark = time.perf_counter()
    processes = runtime.world_size if sharded else 1
    if sharded:
        meter.reduce(runtime)
    result = meter.result()
    seconds = time.perf_counter() - start
    return EpochStats(result.loss, result.top1, seen * processes / max(seconds, 1e-9), seconds,
                      data_seconds=waited, compute_seconds=computed, optimizer_seconds=stepped)


def _optimizer_step(optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler | None,
                    after_step: Callable[[], None] | None) -> None:
    """The end of a group of micro-batches: one optimiser and one schedule step, then the EMA's."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    if after_step is not None:
        after_step()


@torch.inference_mode()
def evaluate_loader(model: nn.Module, loader: Iterable, runtime: Runtime, num_classes: int,
                    loss_fn: Callable | None = None, prepare: Callable | None = None,
                    description: str = "eval", sharded: bool = True, keep_probs: bool = False,
                    multi_label: bool = False) -> EvalResult | MultiLabelResult:
    """Top-1/top-5, per-class accuracy and confusion over `loader` (model in eval mode); with
    `keep_probs`, the softmax of every sample too, in loader order (this process's only).
    `multi_label`: mAP and F1 at thresholds chosen on these images (always keeps the sigmoid
    probabilities: mAP needs them; under torchrun they are gathered)."""
    prepare = prepare or runtime.to_device
    model.eval()  # the caller sets the training mode again (see strategy.set_train_mode)
    loss_fn = loss_fn or (nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss())
    meter = MultiLabelMeter(num_classes) if multi_label else ClassificationMeter(num_classes, keep_probs)
    for inputs, targets in tqdm(loader, desc=description, leave=False,
                                disable=None if runtime.is_main else True, dynamic_ncols=True):
        inputs, targets = prepare(inputs), targets.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(inputs)
        meter.update(logits, targets, loss_fn(logits.float(), targets).item())
    if sharded:  # each process evaluated its own shard, unpadded: the sums are exact
        meter.reduce(runtime)
    return meter.result()
