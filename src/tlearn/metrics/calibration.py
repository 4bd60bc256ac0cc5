"""Calibrated confidence for single-label models: temperature scaling, ECE, reliability bins,
and the confidence threshold that answers a chosen fraction of images.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar T fitted on the validation split to minimise the negative log-likelihood:
probabilities become softmax(logits / T), the top-1 label is unchanged. Validation
probabilities serve as logits too: log(softmax(z)) = z - logsumexp(z), a per-row constant that
softmax ignores. Multi-label runs (sigmoid per class, thresholds chosen on val) keep T = 1.

A T fitted and judged on the same images always looks better than T = 1, so a run does not
store `fit_temperature`'s answer as is: calibration_choice.py judges it by 5-fold cross-validation
over the validation split and keeps T = 1 unless the fit lowers the NLL of images it did not see.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError

NUM_BINS = 15  # Guo et al.'s equal-width confidence bins
# The fit's bounds: a validation split the model gets entirely right drives the likelihood's
# optimum towards T = 0 (every answer certain); the bounds keep such a fit finite.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
COVERAGE_LEVELS = 1000  # the coverage table's resolution: thresholds at coverage 0.001, 0.002, ..., 1
UNKNOWN = "unknown"  # the label predict answers below the confidence threshold


def as_logits(probs: torch.Tensor) -> torch.Tensor:
    """Logits up to a per-row constant from probabilities (float64; a probability that underflowed
    to 0 becomes a very negative logit instead of -inf, so a confident mistake costs a finite loss)."""
    return probs.double().clamp_min(1e-300).log()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """The T minimising the mean NLL of softmax(logits / T) on (logits, labels); 1.0 without images.

    A bounded Brent search over log T: the NLL is a smooth one-dimensional function with one
    minimum in log T, and the bounds keep a perfectly separated split finite."""
    from scipy.optimize import minimize_scalar

    if len(logits) == 0:
        return 1.0
    z = logits.double().cpu().numpy()
    targets = np.asarray(labels, dtype=np.int64)
    finite = np.isfinite(z[np.arange(len(z)), targets])  # -inf only if the caller passed log(0) itself
    z, targets = z[finite], targets[finite]
    found = minimize_scalar(lambda log_t: _mean_nll(z, targets, math.exp(log_t)),
                            bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)), method="bounded",
                            options={"xatol": 1e-5})
    return float(math.exp(found.x))


def mean_nll(logits: torch.Tensor, labels: torch.Tensor | np.ndarray, temperature: float = 1.0) -> float:
    """The mean negative log-likelihood of softmax(logits / T) on (logits, labels); 0.0 without images."""
    if len(logits) == 0:
        return 0.0
    return _mean_nll(logits.double().cpu().numpy(), np.asarray(labels, dtype=np.int64), temperature)


def _mean_nll(z: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    from scipy.special import logsumexp

    scaled = z / temperature
    return float(np.mean(logsumexp(scaled, axis=1) - scaled[np.arange(len(z)), targets]))


def scaled_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T), in the logits' dtype (float64 logits from `as_logits` give float32 back)."""
    out = (logits / temperature).softmax(dim=1)
    return out.float() if out.dtype == torch.float64 else out


@dataclass
class Reliability:
    """Per confidence bin: images, their accuracy and their mean confidence (empty bins: 0)."""

    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the image-weighted mean gap between accuracy and confidence."""
        total = self.counts.sum()
        return float((self.counts * np.abs(self.accuracy - self.confidence)).sum() / total) if total else 0.0

    def to_dict(self) -> dict:
        return {"counts": self.counts.tolist(), "accuracy": [round(float(v), 6) for v in self.accuracy],
                "confidence": [round(float(v), 6) for v in self.confidence]}

    @classmethod
    def from_dict(cls, table: dict) -> Reliability:
        """The bins `to_dict` wrote (calibration.json's reliability tables)."""
        return cls(np.asarray(table["counts"], dtype=np.int64), np.asarray(table["accuracy"], dtype=np.float64),
                   np.asarray(table["confidence"], dtype=np.float64))


def reliability(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                num_bins: int = NUM_BINS) -> Reliability:
    """Bin the images by top probability into `num_bins` equal-width bins, (0, 1/n], ..., ((n-1)/n, 1]."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(probs) == 0:
        return Reliability(np.zeros(num_bins, dtype=np.int64), np.zeros(num_bins), np.zeros(num_bins))
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    counts = np.bincount(bins, minlength=num_bins)
    safe = np.maximum(counts, 1)
    return Reliability(counts, np.bincount(bins, correct, num_bins) / safe,
                       np.bincount(bins, confidence, num_bins) / safe)


def expected_calibration_error(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                               num_bins: int = NUM_BINS) -> float:
    return reliability(probs, labels, num_bins).ece


def coverage_table(confidences: np.ndarray | torch.Tensor, levels: int = COVERAGE_LEVELS) -> list[float]:
    """Entry k - 1 (k = 1..levels): the highest threshold at which at least k/levels of these images
    have a top probability >= it. A compact stand-in for every validation confidence."""
    ordered = np.sort(np.asarray(confidences, dtype=np.float64))[::-1]
    if len(ordered) == 0:
        return []
    k = np.arange(1, levels + 1)
    needed = -(-k * len(ordered) // levels)  # ceil(k * n / levels) images answered, at least 1
    return [float(v) for v in ordered[needed - 1]]


def threshold_for_coverage(table: list[float], coverage: float) -> float:
    """The confidence threshold at which a fraction >= `coverage` of the validation images is answered."""
    check_coverage(coverage, "--coverage")
    if not table:
        return 0.0
    level = max(1, math.ceil(coverage * len(table) - 1e-9))  # a table level >= coverage
    return table[level - 1]


def check_coverage(coverage: float, flag: str) -> None:
    if not isinstance(coverage, (int, float)) or not 0.0 < coverage <= 1.0:
        raise ConfigError(f"{flag} must be above 0 and at most 1, got {coverage}")


def check_min_confidence(value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"--min-confidence must be between 0 and 1, got {value}")


def answered(confidences: np.ndarray | torch.Tensor, min_confidence: float | None) -> np.ndarray:
    """Which images are answered (top probability >= the threshold) rather than `unknown`."""
    confidences = np.asarray(confidences)
    return np.ones(len(confidences), dtype=bool) if not min_confidence else confidences >= min_confidence


def sidecar_fields(info) -> dict:
    """The export sidecar's calibration keys for a single-label run (`info`: a ModelInfo)."""
    fields = {"temperature": info.temperature,
              "output": "logits (softmax(logits / temperature) for calibrated probabilities)"}
    if info.min_confidence is not None:
        fields["min_confidence"] = info.min_confidence  # below it tlearn predict answers "unknown"
    return fields
