"""The audit's backbone features: the model by name (default the bundled Lite0), through the
feature cache (features.py), so a later `tlearn train` on the same data reuses them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Samples, adapt_preprocessing
from ..features import FeatureExtractor, default_cache_dir
from ..models import create_model
from ..runtime import setup_runtime

DEFAULT_MODEL = "efficientnet_lite0"


def audit_features(samples: Samples, model_name: str = DEFAULT_MODEL, weights: str = "default",
                   device: str = "auto", batch_size: int = 64, cache_dir: Path | None = None) -> np.ndarray:
    """(N, D) float32 pre-logits features, L2-normalised (cosine similarity is a dot product)."""

    model = create_model(model_name, 2, weights, aux_logits=False)  # the head is never used
    model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, samples, "auto")
    runtime = setup_runtime(device)
    model.to(runtime.device)
    extractor = FeatureExtractor(runtime, batch_size=batch_size, cache_dir=cache_dir or default_cache_dir())
    features = np.asarray(extractor.cached(model, samples, "audit features"), dtype=np.float32)
    features = features.reshape(len(samples), -1)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
