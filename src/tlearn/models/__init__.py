"""Models: names, pretrained weights, head replacement.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "BlockGroup": "block_groups", "describe_groups": "block_groups", "print_block_groups": "block_groups",
    "AuxOutput": "classifier", "Classifier": "classifier", "ModelInfo": "classifier",
    "create_model": "factory",
    "has_offline_weights": "registry", "list_models": "registry", "resolve": "registry",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
