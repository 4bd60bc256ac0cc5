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
    # --amp auto: the dtype each training stage times against fp32 before it picks (None: no candidate;
    # amp_dtype then stays None until a stage chooses it). bf16_units: the CPU's, as PyTorch detects them.
    amp_candidate: torch.dtype | None = None
    bf16_units: tuple[str, ...] = ()

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


def cpu_bf16_units() -> tuple[str, ...]:
    """The CPU's bf16 units, as PyTorch's own checks find them (oneDNN runs bf16 fast only on these;
    elsewhere it emulates bf16 and is slower than fp32)."""
    found = []
    if torch.cpu._is_avx512_bf16_supported():
        found.append("avx512_bf16")
    if torch.cpu._is_amx_tile_supported():
        found.append("amx")
    return tuple(found) if found and torch.ops.mkldnn._is_mkldnn_bf16_supported() else ()


def _amp_mode(amp: bool | str) -> str:
    """--amp: auto, on or off (True and False from configs written before auto existed)."""
    return {True: "on", False: "off"}.get(amp, amp) if isinstance(amp, bool) else amp


def amp_dtypes(device: torch.device, amp: bool | str, amp_dtype: str | None,
               bf16_units: tuple[str, ...]) -> tuple[torch.dtype | None, torch.dtype | None]:
    """(the dtype every pass uses, the dtype --amp auto times against fp32). On CPU only bf16, and only
    with bf16 units; on CUDA bf16 where the GPU has it, else fp16 (auto tries bf16 only)."""
    mode = _amp_mode(amp)
    if mode == "off" or device.type == "mps":
        if mode == "on":
            raise ConfigError("--amp on needs CUDA or a CPU with bf16 units, not Apple MPS")
        return None, None
    if device.type == "cpu":
        if amp_dtype == "fp16" and mode == "on":
            raise ConfigError("--amp-dtype fp16 needs a CUDA device; on CPU --amp uses bf16")
        if not bf16_units:
            if mode == "on":
                raise ConfigError("--amp on: this CPU has no bf16 units (avx512_bf16 or AMX), where bf16 "
                                  "is slower than fp32; use --amp off")
            return None, None
        bf16 = torch.bfloat16
    else:
        bf16 = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if mode == "auto":
        return None, bf16 if amp_dtype in (None, "bf16") else None
    if amp_dtype is None:
        return bf16 or torch.float16, None
    return (torch.bfloat16 if amp_dtype == "bf16" else torch.float16), None


def setup_runtime(device: str = "auto", amp: bool | str = False, amp_dtype: str | None = None,
                  channels_last: bool = True) -> Runtime:
    """Pick the device and the precision (`amp`: auto, on or off); join the torchrun process group when
    launched by torchrun."""
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
    units = cpu_bf16_units() if resolved.type == "cpu" else ()
    dtype, candidate = amp_dtypes(resolved, amp, amp_dtype, units)
    return Runtime(resolved, dtype, channels_last, rank, world_size, candidate, units)


def precision_name(dtype: torch.dtype | None) -> str:
    """bf16, fp16 or fp32: how logs, summary.json and the feature cache's keys name a precision."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


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
