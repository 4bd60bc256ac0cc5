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

from . import __version__
from .checkpoint import atomic_save_tensors
from .data.loaders import make_loader
from .data.samples import Samples
from .data.transforms import eval_transform
from .models.classifier import Classifier
from .preprocessing import Preprocessing
from .runtime import Runtime

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("TLEARN_CACHE") or Path.home() / ".cache" / "tlearn")


def cache_key(model: Classifier, prep: Preprocessing, samples: Samples) -> str:
    """Hash of everything the features depend on; anything else may change freely."""
    parts = {
        "format": CACHE_FORMAT,
        "model": model.info.name,
        "arch": model.info.arch,
        "build_kwargs": model.info.build_kwargs,
        "weights": model.info.weights_id,
        "preprocessing": prep.to_dict(),
        "data": samples.fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@torch.inference_mode()
def extract_features(model: Classifier, samples: Samples, prep: Preprocessing, runtime: Runtime,
                     *, batch_size: int = 64, workers: int | None = None,
                     description: str = "features") -> torch.Tensor:
    """Backbone outputs for every sample, in order, as float32 on the CPU (eval mode)."""
    model.eval()
    loader = make_loader(samples, eval_transform(prep), batch_size=batch_size, shuffle=False,
                         workers=workers, device=runtime.device)
    chunks = []
    for images, _ in tqdm(loader, desc=description, leave=False, disable=None if runtime.is_main else True):
        with runtime.autocast():
            chunks.append(model.forward_features(runtime.to_device(images)).float().cpu())
    return torch.cat(chunks)


def cached_features(model: Classifier, samples: Samples, prep: Preprocessing, runtime: Runtime, *,
                    cache_dir: Path | None, batch_size: int = 64, workers: int | None = None,
                    description: str = "features", log=print) -> torch.Tensor:
    """Features from the cache when the key matches, else extracted (and stored, on rank 0)."""
    if cache_dir is None:
        return extract_features(model, samples, prep, runtime, batch_size=batch_size,
                                workers=workers, description=description)
    key = cache_key(model, prep, samples)
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
    start = time.perf_counter()
    features = extract_features(model, samples, prep, runtime, batch_size=batch_size,
                                workers=workers, description=description)
    seconds = time.perf_counter() - start
    log(f"{description}: {len(samples)} images through the backbone in {seconds:.1f} s "
        f"({len(samples) / max(seconds, 1e-9):.0f} images/s)")
    if runtime.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"features": features}, {"model": model.info.name,
                                                           "weights": model.info.weights_id})
    return features
