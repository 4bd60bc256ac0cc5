"""Pre-logits features of a frozen backbone: computed once, cached on disk, reused.

A frozen, non-augmented stage only trains the head, so recomputing the backbone every
batch of every epoch (the tutorial's loop) is pure waste. The cache key covers the model,
its weights' identity, the preprocessing and the dataset manifest: change any, recompute.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm import tqdm

from .files import atomic_save_tensors
from .data.loaders import default_workers, make_loader
from .data.samples import Samples
from .data.transforms import eval_transform_uint8
from .extraction import backbone_fingerprint, make_engine
from .models.classifier import Classifier
from .preprocessing import Preprocessing
from .runtime import Runtime

CACHE_FORMAT = 2  # 2: resizing moved from Pillow to torchvision tensors; older features differ slightly


def default_cache_dir() -> Path:
    return Path(os.environ.get("TLEARN_CACHE") or Path.home() / ".cache" / "tlearn")


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


def extract_features(model: Classifier, samples: Samples, prep: Preprocessing, runtime: Runtime,
                     *, batch_size: int = 64, workers: int | None = None, description: str = "features",
                     engine: str = "auto", cache_dir: Path | None = None, log=print) -> torch.Tensor:
    """Backbone outputs for every sample, in order, as float32 on the CPU (eval mode)."""
    start = time.perf_counter()
    graph_batch = max(1, min(batch_size, len(samples)))  # the ONNX graph's fixed batch
    forward = make_engine(model, prep, runtime, cache_dir, engine, log, batch_size=graph_batch)
    decoding: dict[str, str] = {}
    batches = _forward_batches(forward, samples, eval_transform_uint8(prep), batch_size=batch_size,
                               workers=workers, device=runtime.device, decoding=decoding)
    with torch.inference_mode():
        chunks = list(tqdm(batches, total=-(-len(samples) // batch_size), desc=description, leave=False,
                           disable=None if runtime.is_main else True))
    seconds = time.perf_counter() - start
    engine_name = forward.name if getattr(forward, "active", True) else "torch"
    log(f"{description}: {len(samples)} images through the backbone ({engine_name}, decoding "
        f"{decoding.get('where', 'inline')}) in {seconds:.1f} s ({len(samples) / max(seconds, 1e-9):.0f} images/s)")
    return torch.cat(chunks).clone()  # a normal tensor (not an inference tensor) for autograd


INLINE_DECODE_SHARE = 0.2  # decode inline when it costs under this share of the forward pass


def _forward_batches(forward, samples: Samples, transform, *, batch_size: int, workers: int | None,
                     device: torch.device, decoding: dict[str, str]) -> Iterator[torch.Tensor]:
    """forward(batch) for consecutive batches of `samples`, in order.

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
            yield forward(head[0])
        if len(head) > 1:
            began = time.perf_counter()
            features = forward(head[1])
            forward_per_image = (time.perf_counter() - began) / len(head[1])
            yield features
            if decode_per_image >= INLINE_DECODE_SHARE * forward_per_image:
                workers = default_workers(samples)
        if start >= total:
            return
        workers = workers or 0
    rest = samples if start == 0 else samples.subset(list(range(start, total)))
    loader = make_loader(rest, transform, batch_size=batch_size, shuffle=False, workers=workers, device=device)
    count = loader.num_workers
    decoding["where"] = f"in {count} worker process{'es' if count > 1 else ''}" if count else "inline"
    for images, _ in loader:
        yield forward(images)


def cached_features(model: Classifier, samples: Samples, prep: Preprocessing, runtime: Runtime, *,
                    cache_dir: Path | None, batch_size: int = 64, workers: int | None = None,
                    description: str = "features", engine: str = "auto", log=print) -> torch.Tensor:
    """Features from the cache when the key matches, else extracted (and stored, on rank 0)."""
    if cache_dir is None:
        return extract_features(model, samples, prep, runtime, batch_size=batch_size, workers=workers,
                                description=description, engine=engine, log=log)
    precision = str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else "fp32"
    key = cache_key(model, prep, samples, precision)
    path = Path(cache_dir) / "features" / f"{key}.safetensors"
    if path.is_file():
        try:
            from safetensors.torch import load_file

            stored = load_file(str(path))["features"]
            if len(stored) == len(samples):
                log(f"{description}: {len(samples)} cached features loaded from {path}")
                return stored
        except Exception:  # a damaged cache file is recomputed, never trusted
            pass
    features = extract_features(model, samples, prep, runtime, batch_size=batch_size, workers=workers,
                                description=description, engine=engine, cache_dir=cache_dir, log=log)
    if runtime.is_main:
        try:  # written under a unique temporary name, then renamed: a concurrent run never sees half
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_tensors(path, {"features": features}, {"model": model.info.name,
                                                               "weights": model.info.weights_id})
        except OSError as error:  # read-only or full: the features are in memory, go on without the cache
            log(f"warning: cannot write the feature cache in {cache_dir} ({error.strerror or error}); "
                "going on without it")
    return features


def export_features(model: Classifier, samples: Samples, class_names: list[str], out: str | Path,
                    runtime: Runtime, *, batch_size: int = 64, workers: int | None = None,
                    split: list[str] | None = None, engine: str = "auto", cache_dir: Path | None = None,
                    log=print) -> Path:
    """Write embeddings, labels, class names and file paths to an .npz (no pickles inside)."""
    import numpy as np

    from .files import atomic_write

    features = cached_features(model, samples, model.info.preprocessing, runtime, cache_dir=cache_dir,
                               batch_size=batch_size, workers=workers, engine=engine, log=log)
    arrays = {
        "embeddings": features.flatten(1).numpy().astype(np.float32),
        "labels": np.asarray(samples.labels, dtype=np.int64),
        "class_names": np.asarray(class_names, dtype=str),
        "paths": np.asarray([samples.describe(i) for i in range(len(samples))], dtype=str),
    }
    if split is not None:
        arrays["split"] = np.asarray(split, dtype=str)
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, buffer.getvalue())
    log(f"wrote {len(samples)} embeddings of size {arrays['embeddings'].shape[1]} to {out}")
    return out
