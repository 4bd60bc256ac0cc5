"""The self-contained HTML pages: the run report (run_report.py, _page.py, _multilabel.py), its
image cards and Grad-CAM, the calibration figure, and the page shell the audit and select share.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "grad_cam": "_grad_cam",
    "overlay_image": "cards", "thumbnail_png": "cards",
    "report_run": "run_report",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
