"""The pool: every image under a folder, and its backbone features through the feature cache.

The pool's images are listed once, sorted by their path relative to the pool (the name every labels
table and page uses), and checked (unreadable files are left out with their reason). Their
features are extracted once and cached with no labels in the cache key (every image carries
label 0), so answering, relabelling or removing images never invalidates them: a second `suggest`
or a restarted labelling page over the same pool extracts nothing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import FileSamples, adapt_preprocessing, is_image_name, unusable_reasons
from ..errors import DataError
from ..features import FeatureExtractor, run_cache_dir
from ..models import Classifier, create_model
from ..run_folder import load_model
from ..runtime import setup_runtime

logger = logging.getLogger(__name__)


@dataclass
class Pool:
    root: Path
    paths: list[str]  # relative to root, '/'-separated, sorted: the images' names everywhere
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why it is left out)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def index(self) -> dict[str, int]:
        return {path: i for i, path in enumerate(self.paths)}

    def full_path(self, relative: str) -> Path:
        return self.root / relative

    def samples(self) -> FileSamples:
        """The pool as samples, all labelled 0: the feature cache's key then depends on the files alone."""
        return FileSamples([str(self.root / path) for path in self.paths], [0] * len(self.paths))


def scan_pool(root: str | Path) -> Pool:
    """Every readable image under `root` (hidden files and folders left out); none is a one-line error."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--pool not found: {root} (a folder of images)" if not root.exists()
                        else f"--pool {root} is a file; a folder of images is expected")
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        relative_dir = os.path.relpath(directory, root).replace(os.sep, "/")
        for name in names:
            if not name.startswith(".") and is_image_name(name):
                found.append(name if relative_dir == "." else f"{relative_dir}/{name}")
    found.sort()
    reasons = unusable_reasons([str(root / path) for path in found])
    paths = [path for path, reason in zip(found, reasons) if reason is None]
    skipped = [(path, reason) for path, reason in zip(found, reasons) if reason is not None]
    if skipped:
        shown = ", ".join(f"{path} ({reason})" for path, reason in skipped[:3])
        logger.warning(f"left out {len(skipped)} unreadable file(s) of the pool: {shown}"
                       + (" ..." if len(skipped) > 3 else ""))
    if not paths:
        raise DataError(f"--pool {root} has no images (.jpg, .png, ... in it or its subfolders)"
                        + (f"; {len(skipped)} unreadable" if skipped else ""))
    return Pool(root, paths, skipped)


@dataclass(frozen=True)
class Backbone:
    """Which features: a model by name (with --weights and --image-size), or a run folder's backbone."""

    model: str = "efficientnet_lite0"
    weights: str = "default"
    image_size: int | None = None
    run: str | None = None
    device: str = "auto"
    batch_size: int = 64
    cache_dir: str | None = None
    use_cache: bool = True

    def build(self, pool: Pool) -> Classifier:
        """The model whose backbone makes the features; its preprocessing adapted to the pool as train would."""
        if self.run is not None:
            model = load_model(self.run)  # a run keeps its own preprocessing
        else:
            # weights="none" is a random backbone: seeded, so every process draws the same one and the
            # feature cache (keyed by the backbone's content) serves the next suggest
            if self.weights == "none":
                torch.manual_seed(0)
            model = create_model(self.model, 2, self.weights, aux_logits=False, image_size=self.image_size)
            model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, pool.samples(), "auto")
        if self.image_size is not None:
            model.info.preprocessing = model.info.preprocessing.with_image_size(self.image_size)
        return model.eval()


def pool_features(pool: Pool, backbone: Backbone) -> np.ndarray:
    """(N, D) float32 features of the pool's images, in `pool.paths` order, from the cache when it has them."""
    runtime = setup_runtime(backbone.device)
    model = backbone.build(pool)
    model.to(runtime.device)
    extractor = FeatureExtractor(runtime, batch_size=backbone.batch_size,
                                 cache_dir=run_cache_dir(backbone.cache_dir, backbone.use_cache))
    features = extractor.cached(model, pool.samples(), description="pool features")
    return np.asarray(features.reshape(len(pool), -1), dtype=np.float32)
