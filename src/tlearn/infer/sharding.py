"""`tlearn predict` under torchrun: each process predicts its own contiguous share of the files and
rank 0 merges the rows in input order into the one output.

The shares are cut at multiples of the batch size, so every batch holds the files it would hold in
one process: the same batches through the same engine give the same numbers, and the merged file
equals the one-process file byte for byte (tests/infer/test_predict_torchrun.py).
"""
from __future__ import annotations

from ..runtime import Runtime
from .prediction import Predictions


def share_of_paths(paths: list[str], batch_size: int, runtime: Runtime) -> list[str]:
    """This process's files: whole batches, contiguous, ranks in order (the last may get fewer)."""
    if not runtime.distributed:
        return paths
    batches = -(-len(paths) // batch_size)
    first = batches * runtime.rank // runtime.world_size
    last = batches * (runtime.rank + 1) // runtime.world_size
    return paths[first * batch_size:last * batch_size]


def merge_predictions(predictions: Predictions, runtime: Runtime) -> Predictions | None:
    """Every process's rows and unreadable files, in rank order (= input order), on rank 0; None on
    the other ranks."""
    if not runtime.distributed:
        return predictions
    import torch.distributed as dist

    gathered = [None] * runtime.world_size if runtime.is_main else None
    dist.gather_object((predictions.rows, predictions.unreadable), gathered, dst=0)
    if not runtime.is_main:
        return None
    return Predictions([row for rows, _ in gathered for row in rows],
                       [item for _, unreadable in gathered for item in unreadable], predictions.min_confidence)
