"""Data: sources, samples, transforms from the weights' preprocessing, loaders.

Sources and samples need no PyTorch; transforms and loaders import it on first use.
"""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "ImageDataset": "loaders", "make_loader": "loaders", "ArraySamples": "samples", "FileSamples": "samples",
    "Samples": "samples", "DatasetSplits": "sources", "load_data": "sources", "load_splits": "sources",
    "resolve_split": "sources",
    "eval_transform": "transforms", "train_transform": "transforms",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
