"""Data: sources, samples, transforms from the weights' preprocessing, loaders.

Sources and samples need no PyTorch; transforms and loaders import it on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageDataset": "loaders", "make_loader": "loaders", "ArraySamples": "samples", "FileSamples": "samples",
    "Samples": "samples", "DatasetSplits": "sources", "load_splits": "sources",
    "eval_transform": "transforms", "train_transform": "transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'tlearn.data' has no attribute {name!r}")
