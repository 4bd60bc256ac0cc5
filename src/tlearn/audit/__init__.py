"""`tlearn audit`: is a data set clean? Duplicates (exact and near, across splits), likely label
errors, class balance and odd images (run.py ties hashing, duplicates, label_issues, oddities
and page together).

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "run_audit": "run", "summary_lines": "run",
    "MIN_COSINE": "_duplicates", "NEAR_HAMMING": "_duplicates", "perceptual_hash_bits": "_hashing",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
