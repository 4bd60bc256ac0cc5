"""The labelling loop: which images to label next (`tlearn suggest`), a labelling page that learns
as the user answers (`tlearn label`), and a review of an audit's findings (`tlearn label --review`).

Other packages import these names from here, the package's front door; modules whose
names start with _ are their package's own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "Backbone": "pool", "Pool": "pool", "pool_features": "pool", "scan_pool": "pool",
    "Suggestion": "suggestions", "read_pool_labels": "suggestions", "suggest": "suggestions",
    "write_suggestions": "suggestions",
    "AnswerTable": "answers", "LabelSession": "session", "ReviewSession": "review",
    "create_label_app": "page_app", "serve_labelling": "page_app",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
