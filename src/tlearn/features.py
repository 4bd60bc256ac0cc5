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

import torch
from tqdm import tqdm

from .checkpoint import atomic_save_tensors
from .data.loaders import make_loader
from .data.samples import Samples
from .data.transforms import eval_transform_uint8, normalize_batch
from .extraction import backbone_fingerprint, make_engine
from .models.classifier import Classifier
from .preprocessing import Preprocessing
from .runtime import Runtime

CACHE_FORMAT = 1


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
    """Backbone outputs for every sample, in order, as float32 on the CPU (eval mode).

    DataLoader workers decode the next batches while the engine computes this one.
    """
    forward = make_engine(model, prep.crop_size, runtime, cache_dir, engine, log,
                          batch_size=max(1, min(batch_size, len(samples))))
    loader = make_loader(samples, eval_transform_uint8(prep), batch_size=batch_size, shuffle=False,
                         workers=workers, device=runtime.device)
    chunks = []
    start = time.perf_counter()
    with torch.inference_mode():
        for images, _ in tqdm(loader, desc=description, leave=False, disable=None if runtime.is_main else True):
            chunks.append(forward(normalize_batch(images, prep)))
    seconds = time.perf_counter() - start
    engine_name = forward.name if getattr(forward, "active", True) else "torch"
    log(f"{description}: {len(samples)} images through the backbone ({engine_name}) in {seconds:.1f} s "
        f"({len(samples) / max(seconds, 1e-9):.0f} images/s)")
    return torch.cat(chunks).clone()  # a normal tensor (not an inference tensor) for autograd


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
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"features": features}, {"model": model.info.name,
                                                           "weights": model.info.weights_id})
    return features


def export_features(model: Classifier, samples: Samples, class_names: list[str], out: str | Path,
                    runtime: Runtime, *, batch_size: int = 64, workers: int | None = None,
                    split: list[str] | None = None, engine: str = "auto", cache_dir: Path | None = None,
                    log=print) -> Path:
    """Write embeddings, labels, class names and file paths to an .npz (no pickles inside)."""
    import numpy as np

    from .checkpoint import atomic_write

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
