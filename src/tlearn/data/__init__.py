"""Data: sources, samples, transforms from the weights' preprocessing, loaders.

Sources and samples need no PyTorch; transforms and loaders import it on first use.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "NO_LABEL": "_folders", "scan_unlabeled": "_folders",
    "cache_images": "image_cache", "default_image_cache_gb": "image_cache",
    "is_image_name": "images", "open_rgb": "images",
    "unusable_reasons": "_folders",
    "FileIndex": "_tables", "read_table": "_tables", "LABEL_COLUMNS": "_tables", "PATH_COLUMNS": "_tables",
    "ImageDataset": "loaders", "default_workers": "loaders", "make_loader": "loaders",
    "IMAGENET_MEAN": "preprocessing", "IMAGENET_STD": "preprocessing", "Preprocessing": "preprocessing",
    "ArraySamples": "samples", "FileSamples": "samples", "Samples": "samples",
    "adapt_preprocessing": "small_images",
    "BUILTIN": "sources", "DatasetSplits": "sources", "default_eval_split": "sources", "load_data": "sources",
    "load_splits": "sources", "require_data_source": "sources", "require_validation": "sources",
    "resolve_split": "sources",
    "Pipeline": "transforms", "Presize": "transforms", "eval_transform": "transforms",
    "eval_transform_uint8": "transforms", "interpolation_mode": "transforms", "normalize_batch": "transforms",
    "train_transform": "transforms",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
