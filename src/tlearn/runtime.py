"""Device, precision and data-parallel processes, in one place (the loops stay plain).

Under `torchrun`, every process trains a shard of each epoch; rank 0 alone writes the run
folder; metrics are summed over processes, never double-counted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import ConfigError


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler is a no-op)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def sum_across_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def alone(self) -> Runtime:
        """This process as if it were the only one: for a pass that rank 0 runs by itself (the end of
        a run's calibration and report), where a collective would wait for ranks that never come."""
        return dataclasses.replace(self, rank=0, world_size=1) if self.distributed else self


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple MPS is not available here (use --device cpu or auto)")
    return torch.device(name)


def setup_runtime(device: str = "auto", amp: bool = False, amp_dtype: str | None = None,
                  channels_last: bool = True) -> Runtime:
    """Pick the device; join the torchrun process group when launched by torchrun."""
    rank, world_size = 0, 1
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            torch.cuda.set_device(local_rank)
            resolved = torch.device("cuda", local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    else:
        resolved = resolve_device(device)
    dtype = None
    if amp:
        if resolved.type != "cuda":
            raise ConfigError("--amp needs a CUDA device: CPUs here have no fast bf16/fp16 units")
        if amp_dtype is None:
            amp_dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        dtype = torch.bfloat16 if amp_dtype == "bf16" else torch.float16
    return Runtime(resolved, dtype, channels_last, rank, world_size)


def close_process_group() -> None:
    """Leave the torchrun process group together: a rank that exits while another still talks
    to it can abort inside gloo's threads ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
