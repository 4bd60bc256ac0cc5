"""A whole classifier over a set of images, through the fastest engine that passes its parity check.

On CPU the backbone runs through the same fixed-shape onnxruntime graph as feature extraction
(extraction.py: exported once per weights and cached, checked against PyTorch on the first
batch, PyTorch when the check fails), and the head runs in PyTorch on its features. For a few
images the export costs more than it saves, so they go through PyTorch eager.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .data.loaders import make_loader
from .data.samples import Samples
from .data.transforms import eval_transform
from .features import FeatureExtractor
from .loops import predict_logits
from .models.classifier import Classifier
from .runtime import Runtime

# Below this many images, PyTorch eager: exporting Lite0 to ONNX and checking it takes about as
# long as eager evaluation of 150 images at 224 px on 2 cores (measured: export + session 5-18 s,
# then 64 images in 1.9 s against 11.2 s eager, on a busy machine).
ENGINE_MIN_IMAGES = 256


def classify(model: Classifier, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
             workers: int | None = None, cache_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of every sample, in order, on the CPU; the model in eval mode."""
    model.eval()
    labels = torch.tensor(samples.labels, dtype=torch.int64)
    if runtime.device.type != "cpu" or len(samples) < ENGINE_MIN_IMAGES:
        loader = make_loader(samples, eval_transform(model.info.preprocessing), batch_size=batch_size,
                             shuffle=False, workers=workers, device=runtime.device)
        return predict_logits(model, loader, runtime), labels
    extractor = FeatureExtractor(runtime, batch_size=batch_size, workers=workers, cache_dir=cache_dir)
    features = extractor.extract(model, samples, description="evaluation")
    with torch.inference_mode():
        return model.head(features).float(), labels
