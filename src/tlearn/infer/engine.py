"""A whole classifier over a set of images, through the fastest engine that passes its parity check.

On CPU the backbone runs through the same fixed-shape onnxruntime graph as feature extraction
(extraction.py: exported once per weights and cached, checked against PyTorch on the first
batch, PyTorch when the check fails), and the head runs in PyTorch on its features. For a few
images the export costs more than it saves, so they go through PyTorch eager.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..data import Samples, eval_transform, make_loader
from ..features import FeatureExtractor
from ..models import Classifier
from ..run_folder import checkpoint
from ..runtime import Runtime
from ..training import InferencePrecision
from ._tta import Views, views_transform, views_transform_uint8

# Below this many images (views included: test-time augmentation runs each), PyTorch eager:
# exporting Lite0 to ONNX and checking it takes about as long as eager evaluation of 150 images
# at 224 px on 2 cores (measured: export + session 5-18 s,
# then 64 images in 1.9 s against 11.2 s eager, on a busy machine).
ENGINE_MIN_IMAGES = 256


def classify(model: Classifier, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
             workers: int | None = None, cache_dir: Path | None = None,
             views: Views | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of every sample, in order, on the CPU; the model in eval mode. With `views`
    (tta.py): the logits of every view of every sample, (N, V, classes), through the same engine."""
    model.eval()
    labels = torch.tensor(samples.labels, dtype=torch.int64)
    count = views.count if views is not None else 1
    if runtime.device.type != "cpu" or len(samples) * count < ENGINE_MIN_IMAGES:  # the passes the model runs
        prep = model.info.preprocessing
        transform = eval_transform(prep) if views is None else views_transform(prep, views)
        loader = make_loader(samples, transform, batch_size=batch_size, shuffle=False, workers=workers,
                             device=runtime.device)
        logits = predict_logits(model, _flattened(loader), runtime, batches=len(loader))
    else:
        extractor = FeatureExtractor(runtime, batch_size=batch_size, workers=workers, cache_dir=cache_dir)
        transform = None if views is None else views_transform_uint8(model.info.preprocessing, views)
        features = extractor.extract(model, samples, description="evaluation", transform=transform)
        with torch.inference_mode():
            logits = model.head(features).float()
    return (logits if views is None else logits.reshape(len(samples), count, -1)), labels


def _flattened(loader):
    """Batches of (images, views, C, H, W) as (images x views, C, H, W), view after view."""
    for images, labels in loader:
        yield (images.flatten(0, 1) if images.ndim == 5 else images), labels


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: Iterable, runtime: Runtime, batches: int | None = None) -> torch.Tensor:
    """float32 logits over `loader` (`batches` long: without it, len(loader)), in order, on the CPU
    (PyTorch eager). Under --amp auto (a runtime with a candidate) the first batches time fp32
    against bf16 (training's InferencePrecision)."""
    model.eval()
    count = batches if batches is not None else len(loader) if hasattr(loader, "__len__") else 0
    precision = InferencePrecision(runtime, count, "evaluation")
    logits = []
    for images, _ in loader:
        images = runtime.to_device(images)
        logits.append(precision.run(functools.partial(_forward, model, images), len(images)))
    return torch.cat(logits)


def _forward(model: nn.Module, images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    with runtime.autocast():
        return model(images).float().cpu()


def best_model_logits(run_dir: Path, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
                      workers: int | None = None, cache_dir: Path | None = None) -> tuple[torch.Tensor, Classifier]:
    """The run's best model's logits of `samples`, in order, and the model."""
    model = checkpoint.load_model(run_dir).to(runtime.device)
    logits, _ = classify(model, samples, runtime, batch_size=batch_size, workers=workers, cache_dir=cache_dir)
    return logits, model
