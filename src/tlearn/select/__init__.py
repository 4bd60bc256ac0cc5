"""`tlearn select`: which backbone and input size, ranked by a linear probe on cached features
(selection.py), with the leaderboard files and page (page.py).

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "format_leaderboard": "page",
    "check_request": "selection", "parse_list": "selection", "parse_sizes": "selection", "run_selection": "selection",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
