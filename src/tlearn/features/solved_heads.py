"""L-BFGS heads already solved, kept beside the feature cache: a rerun on the same features skips the sweep.

The sweep is a deterministic function of the features, the labels and the objective, so its
answer is cached like the features it came from: keyed by a hash of all of them (and the grid),
stored as safetensors (weight, bias) with the solver's figures in the metadata, written whole
by rename. On a warm feature cache the sweep was most of a linear probe's training time (2.3 s
of 2.5 s for 1,000 x 1280 Lite0 features on 2 cores).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_save_tensors
from .head_solver import L2_GRID, HeadObjective, SolverResult

logger = logging.getLogger(__name__)

FORMAT = 1


def head_key(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
             objective: HeadObjective) -> str:
    digest = hashlib.sha256(f"{FORMAT}|{L2_GRID}|{objective.select}|{objective.multi_label}".encode())
    weighted = () if objective.sample_weights is None else (objective.sample_weights,)  # unweighted keys as before
    for tensor in (train_x, train_y, val_x, val_y, objective.class_weights, objective.logit_shift, *weighted):
        if tensor is None:
            digest.update(b"none")
            continue
        flat = tensor.detach().contiguous().reshape(-1)
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return digest.hexdigest()[:32]


def load_solved(head: nn.Linear, cache_dir: Path | None, key: str) -> SolverResult | None:
    """Fill `head` from the cache and return the solve's figures; None when not cached."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / "heads" / f"{key}.safetensors"
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as stored:
            weight, bias = stored.get_tensor("weight"), stored.get_tensor("bias")
            result = SolverResult(**json.loads(stored.metadata()["result"]))
    except (OSError, KeyError, ValueError, TypeError, SafetensorError):  # missing or damaged: solve again
        return None
    if weight.shape != head.weight.shape or bias.shape != head.bias.shape:
        return None
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    logger.info(f"  L-BFGS head (l2 {result.l2:g}) loaded from {path}: the same features were solved before")
    return result


def store_solved(head: nn.Linear, result: SolverResult, cache_dir: Path | None, key: str) -> None:
    if cache_dir is None:
        return

    path = Path(cache_dir) / "heads" / f"{key}.safetensors"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"weight": head.weight, "bias": head.bias},
                            {"result": json.dumps(dataclasses.asdict(result))})
    except OSError:  # a read-only or full cache: the feature cache has said so already
        pass
