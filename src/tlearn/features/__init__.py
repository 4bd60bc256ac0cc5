"""Features of a frozen backbone: extraction backends (onnxruntime, eager), the feature cache and
store, shards under torchrun, and the L-BFGS head solver with its cache of solved heads.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "make_backend": "backends",
    "FeatureExtractor": "extractor", "cache_key": "extractor", "default_cache_dir": "extractor",
    "run_cache_dir": "extractor",
    "FeatureScaler": "few_labels", "Probe": "few_labels", "cross_validate": "few_labels", "fit_probe": "few_labels",
    "self_train": "few_labels",
    "HeadObjective": "head_solver", "fit_linear_head_lbfgs": "head_solver",
    "LogitCache": "logit_cache", "tensor_digest": "logit_cache",
    "head_key": "solved_heads", "load_solved": "solved_heads", "store_solved": "solved_heads",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
