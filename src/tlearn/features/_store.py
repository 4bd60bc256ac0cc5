"""Feature matrices the head solver reads in row chunks: in RAM, or memory-mapped shards on disk.

A data set larger than memory (ImageNet: 1.28 M x 1280 features, 6.5 GB in float32) is written
shard by shard and read back through `np.load(mmap_mode="r")`, so only the chunk being used is
ever copied into process memory; the kernel pages the rest of the file in and out as it likes.

On disk a store is a folder: `features.json` (rows, dim, dtype, shard file names) and
`shard-00000.npy`, `shard-00001.npy`, ... each an ordinary .npy of consecutive rows.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

MANIFEST = "features.json"


@runtime_checkable
class FeatureMatrix(Protocol):
    """Rows of features read in chunks; what `fit_linear_head_lbfgs` accepts besides a tensor."""

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def iter_chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """Consecutive (at most `rows`, dim) tensors in row order, covering every row once."""
        ...


class TensorFeatures:
    """An in-RAM tensor behind the FeatureMatrix interface; chunks are views, nothing is copied."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor.flatten(1)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def dim(self) -> int:
        return self.tensor.shape[1]

    def iter_chunks(self, rows: int) -> Iterator[torch.Tensor]:
        yield from self.tensor.split(rows)


class ShardedFeatures:
    """.npy shards read as one matrix, each memory-mapped only while its rows are being read.

    Mapping a shard per pass, not once for good, keeps the process's resident memory to about
    one shard: touched pages of a live mapping count in RSS until it is unmapped, while the
    page cache keeps them for the next pass either way.
    """

    def __init__(self, paths: list[Path], rows: int, dim: int):
        self.paths, self.rows, self._dim = paths, rows, dim

    def __len__(self) -> int:
        return self.rows

    @property
    def dim(self) -> int:
        return self._dim

    def shard(self, index: int) -> np.memmap:
        return np.load(self.paths[index], mmap_mode="r")

    def iter_chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """Chunks never span shards (a shard's last chunk may be shorter).

        Each chunk is copied out of the mapping: torch cannot wrap a read-only array, and the
        copy (rows x dim, small) is what the float conversion would make anyway for float16.
        """
        for index in range(len(self.paths)):
            shard = self.shard(index)
            for start in range(0, len(shard), rows):
                yield torch.from_numpy(np.array(shard[start:start + rows]))
            del shard  # unmapped here, before the next shard is mapped


def write_feature_shards(directory: str | Path, chunks: Iterable[torch.Tensor | np.ndarray],
                         dtype: str = "float32") -> Path:
    """Write each chunk as one shard under `directory`; returns the folder to pass to open_features.

    `chunks` may be a generator, so a matrix that never fits in RAM can be written piece by piece.
    `dtype` ("float32" or "float16") is the storage type; float16 halves disk and page cache.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names, rows, dim = [], 0, None
    for index, chunk in enumerate(chunks):
        array = chunk.numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        array = array.reshape(len(array), -1).astype(dtype, copy=False)
        if dim is not None and array.shape[1] != dim:
            raise ValueError(f"shard {index} has {array.shape[1]} features, the first had {dim}")
        dim = array.shape[1]
        names.append(f"shard-{index:05d}.npy")
        np.save(directory / names[-1], array)
        rows += len(array)
    if dim is None:
        raise ValueError("no chunks to write")
    # the manifest last: a folder without one is an interrupted write, never a short matrix
    manifest = {"rows": rows, "dim": dim, "dtype": dtype, "shards": names}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return directory


def open_features(path: str | Path) -> ShardedFeatures:
    """Memory-map a folder written by write_feature_shards; reads no feature values."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    paths = [path / name for name in manifest["shards"]]
    # headers only: a truncated or missing shard fails here, not an hour into a solve
    if sum(len(np.load(shard, mmap_mode="r")) for shard in paths) != manifest["rows"]:
        raise ValueError(f"{path}: the shards do not add up to the {manifest['rows']} rows in {MANIFEST}")
    return ShardedFeatures(paths, manifest["rows"], manifest["dim"])
