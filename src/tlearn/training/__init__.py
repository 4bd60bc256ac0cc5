"""Training: the stage runner (runner.py), one epoch loop with events (loop.py, events.py) and the
techniques as callbacks on it (callbacks/), the committed state (state.py), strategies, optimisers,
layer groups, the LR finder.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "check_distillation": "distillation",
    "check_pseudo_labels": "pseudo_labels",
    "InferencePrecision": "inference_precision",
    "lr_find": "lr_find_command",
    "CSV_FILE": "lr_finder", "PLOT_FILE": "lr_finder",
    "StagesResult": "outputs",
    "label_tensor": "stage_data",
    "ResumePoint": "state",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
