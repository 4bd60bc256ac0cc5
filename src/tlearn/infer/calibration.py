"""A run's calibration, chosen once at the end of training and read by predict.

`calibrate_run` chooses the temperature from the best epoch's validation probabilities (a
cross-validated fit, or T = 1 and why: calibration_choice.py), stores it (and `min_confidence`
for `train --coverage`) in model.json, adds the validation ECE before and after to the summary,
and writes calibration.json: the temperature, the decision and its evidence, both reliability
tables and a coverage table of calibrated validation confidences, so `tlearn predict RUN
--coverage C` picks its threshold without the data. The "after" ECE and reliability table are
out-of-fold (each image calibrated by a T fitted without it), so they are fair figures; the
coverage table uses the stored T on every validation image, as predict will.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RunFolderError
from ..files import read_json, write_json
from ..metrics import (
    FITTED,
    UNKNOWN,
    TemperatureChoice,
    answered,
    as_logits,
    check_coverage,
    check_min_confidence,
    choose_temperature,
    coverage_table,
    reliability,
    scaled_probabilities,
    threshold_for_coverage,
)
from ..models import ModelInfo
from ..run_folder import checkpoint

logger = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"


def calibrate_run(run_dir: Path | None, info: ModelInfo, probs: torch.Tensor, labels, coverage: float | None,
                  summary: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Choose T on validation (`probs`: the best model's uncalibrated softmax) and record it; returns
    the validation probabilities at that T and the calibration record (calibration.json's content).
    `summary` gains temperature, calibration (the decision), val_ece (out-of-fold) and
    val_ece_uncalibrated; with a `run_dir`, model.json and calibration.json are written."""
    labels = np.asarray(labels, dtype=np.int64)
    logits = as_logits(probs)
    choice = choose_temperature(logits, labels)
    calibrated = scaled_probabilities(logits, choice.temperature)
    before = reliability(probs.numpy(), labels)
    after = before if choice.held_out is None else reliability(choice.held_out.numpy(), labels)
    table = coverage_table(calibrated.max(dim=1).values.numpy())
    info.temperature = round(choice.temperature, 6)
    info.min_confidence = _floor(threshold_for_coverage(table, coverage)) if coverage is not None else None
    summary.update({"temperature": info.temperature, "calibration": choice.decision, "val_ece": round(after.ece, 6),
                    "val_ece_uncalibrated": round(before.ece, 6)})
    if info.min_confidence is not None:
        summary.update({"coverage": coverage, "min_confidence": info.min_confidence})
    logger.info(_log_line(choice, before.ece, after.ece, info.min_confidence, coverage))
    record = {"temperature": info.temperature, **choice.to_dict(), "num_val": len(labels),
              "num_bins": len(after.counts), "ece": round(after.ece, 6), "ece_uncalibrated": round(before.ece, 6),
              "reliability": after.to_dict(), "reliability_uncalibrated": before.to_dict(),
              # entry k-1: the highest threshold answering at least k/len(table) of the validation images
              "coverage_thresholds": [_floor(v) for v in table]}
    if run_dir is not None:
        write_json(run_dir / CALIBRATION_FILE, record)
        checkpoint.save_model_info(run_dir, info)
    return calibrated, record


def _log_line(choice: TemperatureChoice, before: float, after: float, min_confidence: float | None,
              coverage: float | None) -> str:
    """The run's one calibration line: the fitted T and its out-of-fold evidence, or why T = 1."""
    if choice.decision == FITTED:
        line = (f"calibration: temperature {choice.temperature:.3f}, val ECE {before:.4f} -> {after:.4f} "
                f"out-of-fold; {choice.reason}")
    else:
        line = f"calibration: keeping T = 1: {choice.reason}; val ECE {before:.4f}"
    if min_confidence is not None:
        line += f"; --coverage {coverage:g}: min confidence {min_confidence:.4f}"
    return line


def _floor(threshold: float) -> float:
    """A hair below, six digits: the image a threshold was taken from, predicted again through another
    engine (eager PyTorch, not onnxruntime features) in float32, must still reach it."""
    return max(0.0, math.floor((threshold - 2e-6) * 1e6) / 1e6)


def coverage_threshold(run_dir: str | Path, coverage: float) -> float:
    """The min confidence at which a fraction >= `coverage` of the run's validation images is answered."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        raise RunFolderError(f"{run_dir} has no {CALIBRATION_FILE} (a multi-label run, or trained before "
                             "calibration): use --min-confidence P instead of --coverage")
    table = read_json(path).get("coverage_thresholds")
    if not isinstance(table, list) or not table:
        raise RunFolderError(f"{path} has no coverage table: use --min-confidence P instead of --coverage")
    return threshold_for_coverage(table, coverage)


def resolve_min_confidence(info: ModelInfo, run_dir: str | Path | None, min_confidence: float | None = None,
                           coverage: float | None = None) -> float | None:
    """The threshold predict applies: `min_confidence` as given, the one answering `coverage` of the
    run's validation images, or else the run's own (train --coverage); None or 0: answer everything."""
    if min_confidence is not None and coverage is not None:
        raise ConfigError("--min-confidence and --coverage set the same threshold: give one of them")
    if (min_confidence is not None or coverage is not None) and info.multi_label:
        raise ConfigError("--min-confidence and --coverage are for single-label runs; a multi-label run answers "
                          "each class at its own threshold")
    if min_confidence is not None:
        check_min_confidence(min_confidence)
        threshold = float(min_confidence)
    elif coverage is not None:
        check_coverage(coverage, "--coverage")
        if run_dir is None:
            raise ConfigError("--coverage needs the model's run folder (its calibration.json): tlearn.load(RUN)")
        threshold = coverage_threshold(run_dir, coverage)
    else:
        threshold = info.min_confidence
    if threshold and UNKNOWN in info.class_names:
        logger.warning(f"the run has a class named {UNKNOWN!r}: predictions below the confidence threshold are "
                       f"labelled {UNKNOWN!r} too")
    return threshold or None


def mark_unknown(rows: list[dict[str, Any]], min_confidence: float | None) -> list[dict[str, Any]]:
    """Rows of predict_batch whose top probability is below `min_confidence` answer "unknown" (their
    best guess kept as "guess"); every row says whether it was "answered"."""
    for row in rows:
        row["answered"] = not min_confidence or row["prob"] >= min_confidence
        if not row["answered"]:
            row["guess"], row["label"] = row["label"], UNKNOWN
            row["labels"] = [UNKNOWN, *row["labels"][1:]]
    return rows


def calibration_figures(logits: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor,
                        info: ModelInfo) -> dict[str, Any]:
    """eval's calibration figures: the temperature, ECE with and without it and, when the run has a
    min confidence (train --coverage), the fraction of images answered and their accuracy."""
    labels = labels.numpy()
    figures = {"temperature": info.temperature, "ece": round(reliability(probs.numpy(), labels).ece, 6),
               "ece_uncalibrated": round(reliability(logits.softmax(dim=1).numpy(), labels).ece, 6)}
    if info.min_confidence:
        confidences, predicted = probs.max(dim=1)
        kept = answered(confidences.numpy(), info.min_confidence)
        correct = predicted.numpy() == labels
        figures.update({"min_confidence": info.min_confidence, "answered": round(float(kept.mean()), 6) if len(kept)
                        else 0.0, "answered_top1": round(float(correct[kept].mean()), 6) if kept.any() else 0.0})
    return figures
