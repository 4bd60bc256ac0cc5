"""Pre-logits features of a frozen backbone: computed once, cached on disk, reused.

A frozen, non-augmented stage only trains the head, so recomputing the backbone every
batch of every epoch (the tutorial's loop) is pure waste. The cache key covers the model,
its weights' identity, the preprocessing and the dataset manifest: change any, recompute.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data import Preprocessing, Samples, default_workers, eval_transform_uint8, make_loader
from ..files import atomic_write, atomic_write_with
from ..models import Classifier
from ..runtime import Runtime
from ._shards import gather_batches, on_every_rank, shard_indices
from .backends import FeatureBackend, backbone_fingerprint, make_backend

logger = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 2: tensor resizing (not Pillow); 3: .npy files, large JPEGs decoded DCT-scaled (images.py)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TLEARN_CACHE") or Path.home() / ".cache" / "tlearn")


def run_cache_dir(cache_dir: str | None, use_cache: bool) -> Path | None:
    """Where a run keeps its caches: --cache-dir, else the default; None with --no-cache."""
    return (Path(cache_dir) if cache_dir else default_cache_dir()) if use_cache else None


def cache_key(model: Classifier, prep: Preprocessing, samples: Samples, precision: str = "fp32") -> str:
    """Hash of everything the features depend on; anything else may change freely."""
    parts = {
        "precision": precision,  # bf16/fp16 autocast features differ from fp32 ones
        "format": CACHE_FORMAT,
        "model": model.info.name,
        "arch": model.info.arch,
        "build_kwargs": model.info.build_kwargs,
        "backbone": backbone_fingerprint(model),  # content hash: random init and edits included
        "preprocessing": prep.to_dict(),
        "data": samples.fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


INLINE_DECODE_SHARE = 0.2  # decode inline when it costs under this share of the forward pass


@dataclass
class FeatureExtractor:
    """How a backbone's features are computed: device, batches, decoding, backend, cache."""

    runtime: Runtime
    batch_size: int = 64
    workers: int | None = None  # None: decide by measuring (see _forward_batches)
    backend: str = "auto"  # auto: onnxruntime on CPU when it matches PyTorch | torch
    cache_dir: Path | None = None  # None: no cache
    cache_failed: bool = field(default=False, init=False)  # warned once; stores are skipped since

    def __post_init__(self) -> None:
        # On CPU the features come from onnxruntime's fp32 graph, whatever --amp says: it extracts
        # faster than PyTorch under bf16 here (docs/precision.md), and its parity check must compare
        # it with fp32 PyTorch, not bf16 (which differs by far more than the check allows).
        if self.runtime.device.type == "cpu" and self.runtime.amp_dtype is not None:
            self.runtime = dataclasses.replace(self.runtime, amp_dtype=None)

    def extract(self, model: Classifier, samples: Samples, description: str = "features",
                transform=None) -> torch.Tensor:
        """Backbone outputs for every sample, in order, as float32 on the CPU (eval mode).
        `transform`: decoded image -> uint8 image, or uint8 views (V, C, H, W): test-time
        augmentation (tta.py), whose rows then come view after view.

        Under torchrun each process extracts its shard of whole batches and every process
        returns all the features, bit-identical to a single process's (feature_shards.py)."""
        start = time.perf_counter()
        runtime = self.runtime
        shard = samples
        if runtime.distributed:
            shard = samples.subset(shard_indices(len(samples), self.batch_size, runtime.rank, runtime.world_size))
        chunks: list[torch.Tensor] = []
        how, shares = self._forward(model, samples, shard, description, chunks.append, transform), ""
        if runtime.distributed:
            features, counts = gather_batches(chunks, runtime)
            shares = f"; shards of {' + '.join(map(str, counts))} images over {runtime.world_size} processes"
        else:
            features = torch.cat(chunks).clone()  # a normal tensor, not an inference one
        _log_extraction(description, len(samples), how, start, shares)
        return features

    def _forward(self, model: Classifier, samples: Samples, shard: Samples, description: str, consume,
                 transform=None) -> str:
        """`consume(features)` for each batch of `shard`, in order; says which backend and decoding ran."""
        graph_batch = max(1, min(self.batch_size, len(samples)))  # the ONNX graph's fixed batch, from the whole
        backend = self._backend(model, graph_batch)
        where = "inline"

        def forward(images: torch.Tensor) -> torch.Tensor:  # views of each image (tta.py) as consecutive rows
            return backend(images.flatten(0, 1) if images.ndim == 5 else images)

        batches = _forward_batches(forward, shard, transform or eval_transform_uint8(model.info.preprocessing),
                                   self.batch_size, self.workers, self.runtime.device)
        with torch.inference_mode():
            for features, decoded in tqdm(batches, total=-(-len(shard) // self.batch_size), desc=description,
                                          leave=False, disable=None if self.runtime.is_main else True):
                consume(features)
                where = decoded  # the last batch's: the workers, once they took over
        return f"{backend.name}, decoding {where}"

    def _extract_into(self, model: Classifier, samples: Samples, description: str, tmp: str) -> None:
        """Each batch straight into the .npy file `tmp`: the features are never all in memory."""
        start, rows, array = time.perf_counter(), 0, None

        def write(features: torch.Tensor) -> None:
            nonlocal rows, array
            if array is None:  # the feature shape is known from the first batch
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                  shape=(len(samples), *features.shape[1:]))
            array[rows:rows + len(features)] = features.float().numpy()
            rows += len(features)

        how = self._forward(model, samples, samples, description, write)
        if array is None:  # no samples
            with open(tmp, "wb") as handle:
                np.save(handle, np.zeros((0, 0), dtype=np.float32))
        else:
            array.flush()
            del array  # unmapped before the caller fsyncs and renames the file
        _log_extraction(description, len(samples), how, start)

    def _backend(self, model: Classifier, graph_batch: int) -> FeatureBackend:
        """Under torchrun rank 0 exports the ONNX graph first and the others load its file:
        one export instead of one per process, each holding the model twice in memory."""
        runtime = self.runtime
        if not runtime.is_main:
            runtime.barrier()
        backend = make_backend(model, model.info.preprocessing, runtime, self.cache_dir, self.backend,
                               batch_size=graph_batch)
        if runtime.is_main:
            runtime.barrier()
        return backend

    def cached(self, model: Classifier, samples: Samples, description: str = "features") -> torch.Tensor:
        """Features from the cache when the key matches, else extracted and stored.

        The cache entry is one float32 .npy file read back through a memory map: a feature set
        larger than memory is paged in as the head solver streams over it (head_solver.py)."""
        if self.cache_dir is None:
            return self.extract(model, samples, description)
        runtime = self.runtime
        precision = str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "fp32"
        key = cache_key(model, model.info.preprocessing, samples, precision)
        path = Path(self.cache_dir) / "features" / f"{key}.npy"
        stored = _read_cached(path, len(samples))
        found = stored is not None
        if runtime.distributed:  # all read it or all extract: a process that skipped would leave the rest waiting
            found = on_every_rank(found, runtime)
        if found:
            logger.info(f"{description}: {len(samples)} cached features loaded from {path}")
            return stored
        if runtime.distributed or self.cache_failed:
            features = self.extract(model, samples, description)
            if runtime.is_main:
                self._store(path, lambda tmp: _save_array(tmp, features.numpy()))
            return features
        if self._store(path, lambda tmp: self._extract_into(model, samples, description, tmp)):
            stored = _read_cached(path, len(samples))
            if stored is not None:
                return stored
        return self.extract(model, samples, description)  # the cache could not be written

    def _store(self, path: Path, write) -> bool:
        """`write(temporary_path)` fills the entry, which appears whole, by rename: a concurrent run
        never sees half of it. False when the cache cannot be written (warned once)."""
        if self.cache_failed:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_with(path, write)
            return True
        except OSError as error:  # read-only or full: go on without the cache
            self.cache_failed = True
            logger.warning(f"cannot write the feature cache in {self.cache_dir} ({error.strerror or error}); "
                           "going on without it")
            return False

    def export(self, model: Classifier, samples: Samples, class_names: list[str], out: str | Path,
               split_names: list[str] | None = None) -> Path:
        """Write embeddings, labels, class names and file paths to an .npz (no pickles inside)."""
        features = self.cached(model, samples)
        arrays = {
            "embeddings": features.flatten(1).numpy().astype(np.float32),
            "labels": np.asarray(samples.labels, dtype=np.int64),
            "class_names": np.asarray(class_names, dtype=str),
            "paths": np.asarray([samples.describe(i) for i in range(len(samples))], dtype=str),
        }
        if split_names is not None:
            arrays["split"] = np.asarray(split_names, dtype=str)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, buffer.getvalue())
        logger.info(f"wrote {len(samples)} embeddings of size {arrays['embeddings'].shape[1]} to {out}")
        return out


def map_above_bytes() -> int:
    """Entries larger than this are memory-mapped, smaller ones read into memory: a quarter of
    the machine's memory. (A mapped file truncated in place under a reader, by hand, would
    crash it with SIGBUS; tlearn itself only ever replaces entries by rename.)"""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def _read_cached(path: Path, count: int) -> torch.Tensor | None:
    """The entry as a tensor, over a copy-on-write memory map when it is large; None when missing
    or damaged."""
    if not path.is_file():
        return None
    try:
        mapped = path.stat().st_size > map_above_bytes()
        array = np.load(path, mmap_mode="c" if mapped else None, allow_pickle=False)
    except (OSError, ValueError):  # a damaged cache file is recomputed, never trusted
        return None
    if array.dtype != np.float32 or len(array) != count:
        return None
    return torch.from_numpy(array)


def _save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append .npy to a temporary name
        np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)


def _log_extraction(description: str, count: int, how: str, start: float, shares: str = "") -> None:
    seconds = time.perf_counter() - start
    logger.info(f"{description}: {count} images through the backbone ({how}) in {seconds:.1f} s "
                f"({count / max(seconds, 1e-9):.0f} images/s){shares}")


def _forward_batches(backend: FeatureBackend, samples: Samples, transform, batch_size: int, workers: int | None,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, str]]:
    """(backend(batch), where it was decoded) for consecutive batches of `samples`, in order.

    Where to decode, on CPU with `workers` left automatic: the engine's threads use every core,
    and a DataLoader worker that wakes up preempts one of them, which stalls the others at the
    next synchronisation point. Measured on 2 cores (Lite0, 224 px, 32 px JPEGs), extraction ran
    at 0.91 of the engine's in-memory rate decoding inline, 0.85 with one worker, 0.81 with two.
    So the first two batches are decoded here and timed against the forward pass (the first
    forward, warm-up and parity check, is not timed): when decoding costs under
    INLINE_DECODE_SHARE of the forward, the rest is decoded inline too, else by workers. A
    large photo (several ms to decode) goes to workers; a thumbnail stays inline.
    """
    total, start = len(samples), 0
    if workers is None and device.type == "cpu":
        start = min(2 * batch_size, total)
        began = time.perf_counter()
        head = [images for images, _ in make_loader(samples.subset(list(range(start))), transform,
                                                    batch_size=batch_size, shuffle=False, workers=0, device=device)]
        decode_per_image = (time.perf_counter() - began) / max(start, 1)
        if head:
            yield backend(head[0]), "inline"
        if len(head) > 1:
            began = time.perf_counter()
            features = backend(head[1])
            forward_per_image = (time.perf_counter() - began) / len(head[1])
            yield features, "inline"
            if decode_per_image >= INLINE_DECODE_SHARE * forward_per_image:
                workers = default_workers(samples)
        if start >= total:
            return
        workers = workers or 0
    rest = samples if start == 0 else samples.subset(list(range(start, total)))
    loader = make_loader(rest, transform, batch_size=batch_size, shuffle=False, workers=workers, device=device)
    count = loader.num_workers
    where = f"in {count} worker process{'es' if count > 1 else ''}" if count else "inline"
    for images, _ in loader:
        yield backend(images), where
