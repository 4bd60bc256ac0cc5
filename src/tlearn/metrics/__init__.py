"""Figures from predictions: top-k and per-class (classification.py), multi-label AP/F1 and
thresholds, ECE, temperature scaling and its cross-validated choice, class imbalance. No models.

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "NUM_BINS": "calibration", "Reliability": "calibration", "UNKNOWN": "calibration", "answered": "calibration",
    "as_logits": "calibration", "check_coverage": "calibration", "check_min_confidence": "calibration",
    "coverage_table": "calibration", "reliability": "calibration", "scaled_probabilities": "calibration",
    "sidecar_fields": "calibration", "threshold_for_coverage": "calibration",
    "FITTED": "calibration_choice", "FOLDS": "calibration_choice", "TemperatureChoice": "calibration_choice",
    "choose_temperature": "calibration_choice",
    "ClassificationMeter": "classification", "EpochStats": "classification", "EvalResult": "classification",
    "per_class_scores": "classification",
    "WARN_RATIO": "imbalance", "class_counts": "imbalance", "imbalance_ratio": "imbalance",
    "warn_if_imbalanced": "imbalance",
    "DEFAULT_THRESHOLD": "multilabel", "MultiLabelMeter": "multilabel", "MultiLabelResult": "multilabel",
    "TrainMeter": "multilabel", "label_counts": "multilabel", "predict_multi_label": "multilabel",
    "remap_multi_hot": "multilabel", "score": "multilabel",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
