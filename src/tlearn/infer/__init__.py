"""Inference from a run folder: the trained model (trained.py), evaluation, prediction of files,
test-time augmentation, export, the run's calibration, and the engines that run many images
through onnxruntime on CPU (the run's cached graph, or the int8 one).

Other packages import these names from here, the package's front door; modules whose
names start with _ are its own."""
from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    "calibrate_run": "calibration",
    "best_model_logits": "engine",
    "ENGINES": "engines", "INT8_FILE": "engines", "open_engine": "engines",
    "TOLERANCE": "export", "export_run": "export",
    "collect_paths": "prediction", "csv_cells": "prediction", "csv_header": "prediction",
    "output_layout": "prediction", "predict_files": "prediction", "write_predictions": "prediction",
    "CALIBRATION_IMAGES": "quantize", "MAX_DROP": "quantize", "describe_gate": "quantize", "quantize_run": "quantize",
    "merge_parts": "sharding", "merge_predictions": "sharding", "part_files": "sharding", "part_path": "sharding",
    "share_of_paths": "sharding",
    "CsvStream": "streaming", "JsonStream": "streaming",
    "TrainedModel": "trained", "load": "trained", "predict": "trained",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
