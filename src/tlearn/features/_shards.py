"""Feature extraction under torchrun: each process extracts a shard, every process gets the whole.

Shards are whole batches of the extractor's batch size, dealt out in turn (rank r takes batches
r, r+W, r+2W, ...), so every image goes through the backbone in exactly the batch a single
process would give it: the same companions, the same fixed-shape ONNX graph, the same zero
padding of the last batch. The gathered features are then bit-identical to a single process's
by construction, and the cache entry rank 0 stores is the one a single process would write.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..runtime import Runtime


def shard_indices(count: int, batch_size: int, rank: int, world_size: int) -> list[int]:
    """The sample indices of batches rank, rank + world_size, ...: only the dataset's last batch
    can be short, so batching this shard consecutively yields exactly those batches."""
    return [index for start in range(rank * batch_size, count, world_size * batch_size)
            for index in range(start, min(start + batch_size, count))]


def gather_batches(batches: list[torch.Tensor], runtime: Runtime) -> tuple[torch.Tensor, list[int]]:
    """Every process's batches, dealt back into dataset order; and how many images each computed.

    Objects, not tensors: gloo's all_gather needs equal sizes, and shards differ by a batch."""
    shards: list[list[torch.Tensor]] = [[] for _ in range(runtime.world_size)]
    dist.all_gather_object(shards, batches)
    total = sum(len(shard) for shard in shards)
    ordered = [shards[batch % runtime.world_size][batch // runtime.world_size] for batch in range(total)]
    return torch.cat(ordered), [sum(len(batch) for batch in shard) for shard in shards]


def on_every_rank(flag: bool, runtime: Runtime) -> bool:
    """True when `flag` holds on every process: one answer for all, so none skips a collective
    the others enter (a cache entry that appears between two processes' reads, say)."""
    value = torch.tensor([int(flag)], device=runtime.device)  # NCCL reduces on the GPU only
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
