"""The run folder, the boundary between training and everything after it: its text files
(records.py), model and training state (checkpoint.py), its lock and --overwrite (guard.py).

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "load_model": "checkpoint", "published_weights": "checkpoint",
    "check_out_folder": "guard", "claim_run_folder": "guard", "run_folder_lock": "guard",
    "run_folder_writes": "guard",
    "METRICS_FILE": "records", "read_config": "records",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
