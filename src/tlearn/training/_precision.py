"""--amp auto: a training stage times its first batch in fp32 and in bf16, and keeps the faster.

Why measured, not assumed: on a CPU with bf16 units, bf16 doubles a ResNet-50's training step and
slows an EfficientNet-Lite0's (its depthwise convolutions gain nothing), so no rule picks right.
The timed steps run on a copy of the model and its optimiser, and the RNG states are put back, so
the stage then trains exactly as if nothing had been timed: a stage that keeps fp32 is
bit-identical to --amp off. The cost is those few steps (WARMUP_STEPS + TIMED_STEPS a precision).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..runtime import Runtime, precision_name
from ._loop import compute_loss
from ._optim import make_optimizer
from ._precision_rule import MARGIN, TIMED_STEPS, WARMUP_STEPS, choose_precision, log_choice
from .strategy import parameter_groups, set_train_mode

logger = logging.getLogger(__name__)


def log_precision(runtime: Runtime, amp: str) -> None:
    """Say which precision the run trains in and why (on CPU: which bf16 units PyTorch found)."""
    if runtime.device.type != "cpu":
        where = ""
    elif runtime.bf16_units:
        where = f"; CPU bf16 units: {', '.join(runtime.bf16_units)}"
    else:
        where = "; this CPU has no bf16 units (avx512_bf16, AMX), where bf16 is emulated and slower: fp32"
    if runtime.amp_candidate is not None:
        what = f"--amp auto: each training stage times fp32 and {precision_name(runtime.amp_candidate)}"
    else:
        what = f"--amp {amp}: {precision_name(runtime.amp_dtype)}"
    logger.info(f"precision: {what}{where}")


def precision_record(runtime: Runtime, amp: str, chosen: dict[str, Any]) -> dict[str, Any]:
    """summary.json's account of the precision: the mode, the CPU's bf16 units, each stage's choice."""
    return {"mode": amp, "dtype": precision_name(runtime.amp_dtype), "bf16_units": list(runtime.bf16_units),
            "stages": chosen}


def stage_runtime(runtime: Runtime, config: TrainConfig, chosen: dict[str, Any], stage_key: str,
                  measure: Callable[[], dict[str, float]] | None) -> Runtime:
    """The runtime a stage trains under. `chosen` holds the stages' choices (Progress.precisions): a
    resumed stage keeps its own. `measure` times the stage's steps (None: the stage trains no
    images, so fp32)."""
    if runtime.amp_candidate is None:
        return runtime
    candidate = precision_name(runtime.amp_candidate)
    if stage_key not in chosen:
        if config.deterministic:
            chosen[stage_key] = {"precision": "fp32", "reason": "--deterministic keeps fp32 (no timing)"}
        elif measure is None:
            chosen[stage_key] = {"precision": "fp32", "reason": "the head on cached features: nothing to gain"}
        else:
            rates = measure()
            choice = choose_precision(rates, candidate)
            chosen[stage_key] = {"precision": choice, **{f"{name}_images_per_s": round(rate, 2)
                                                         for name, rate in rates.items()},
                                 "reason": f"{candidate} {'at least' if choice != 'fp32' else 'under'} "
                                           f"{MARGIN:.2f}x fp32's rate"}
        log_choice(chosen[stage_key], resumed=False)
    else:
        log_choice(chosen[stage_key], resumed=True)
    keep = chosen[stage_key]["precision"] != "fp32"
    return dataclasses.replace(runtime, amp_dtype=runtime.amp_candidate if keep else None)


def measure_step_rates(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_fn: Callable,
                       runtime: Runtime, config: TrainConfig, aux_weight: float = 0.0,
                       steps: int = TIMED_STEPS) -> dict[str, float]:
    """Images/s of a training step (forward, backward, optimiser) of `model` on `batch`, in fp32 and
    in the runtime's candidate precision, on a copy of the model and optimiser; the RNG states are
    restored, so the run goes on as if nothing had run. Under torchrun the processes' times are summed,
    so every process chooses alike."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda_states = torch.cuda.get_rng_state_all() if runtime.device.type == "cuda" else None
    try:
        trial = copy.deepcopy(model)
        set_train_mode(trial, config.bn_train)
        optimizer = make_optimizer(parameter_groups(trial, config), config)
        inputs, targets = batch
        dtypes = {"fp32": None, precision_name(runtime.amp_candidate): runtime.amp_candidate}
        seconds: dict[str, list[float]] = {name: [] for name in dtypes}
        for round_index in range(WARMUP_STEPS + steps):
            for name, dtype in dtypes.items():  # interleaved: a burst of load hits both alike
                took = _timed_step(trial, optimizer, inputs, targets, loss_fn, dataclasses.replace(
                    runtime, amp_dtype=dtype), aux_weight)
                if round_index >= WARMUP_STEPS:
                    seconds[name].append(took)
        medians = torch.tensor([statistics.median(seconds[name]) for name in dtypes], dtype=torch.float64)
        medians = runtime.sum_across_processes(medians)
        return {name: len(targets) * runtime.world_size / max(float(value), 1e-9)
                for name, value in zip(dtypes, medians)}
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _timed_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor,
                loss_fn: Callable, runtime: Runtime, aux_weight: float) -> float:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    start = time.perf_counter()
    with runtime.autocast():
        loss, _ = compute_loss(model(inputs), targets, loss_fn, aux_weight)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    return time.perf_counter() - start
