"""The report's reliability diagram: accuracy against confidence per bin, before and after the
temperature, with both ECEs (calibration.py). Saved as reliability.png beside report.html."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from .calibration import NUM_BINS, Reliability, reliability
from .files import atomic_write

RELIABILITY_FILE = "reliability.png"


def reliability_section(run_dir: Path, probs: np.ndarray, labels: np.ndarray, summary: dict | None) -> str:
    """The section for a single-label report: `probs` are the calibrated probabilities the page shows;
    the uncalibrated ones are recovered with the run's temperature (softmax(T x log p))."""
    if len(labels) == 0:
        return ""
    temperature = float((summary or {}).get("temperature", 1.0))
    probs = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.clip(probs, 1e-300, None)) * temperature
    raw = np.exp(logits - logits.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    before, after = reliability(raw, labels), reliability(probs, labels)
    png = _diagram_png(before, after, temperature)
    atomic_write(run_dir / RELIABILITY_FILE, png)
    text = (f"<p>{len(labels)} images in {NUM_BINS} equal-width bins of top probability. Expected calibration "
            f"error (ECE) {before.ece:.4f} before, <b>{after.ece:.4f}</b> after temperature scaling "
            f"(T = {temperature:.3f}, fitted on the run's validation split: on that split the 'after' is "
            "optimistic, on other data (tlearn eval --report) it is a fair test). "
            "Bars on the diagonal: the stated confidence is the accuracy.</p>")
    data = base64.b64encode(png).decode()
    return (f"<section><h2>Calibration</h2>{text}<div><img alt='{html.escape(RELIABILITY_FILE)}' "
            f"src='data:image/png;base64,{data}'></div></section>")


def _diagram_png(before: Reliability, after: Reliability, temperature: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 1.0 / len(before.counts)
    centers = (np.arange(len(before.counts)) + 0.5) * width
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for axis, bins, name in ((axes[0], before, "before (T = 1)"), (axes[1], after, f"after (T = {temperature:.2f})")):
        filled = bins.counts > 0
        axis.bar(centers[filled], bins.accuracy[filled], width=width * 0.95, color="#4878a8", label="accuracy")
        axis.bar(centers[filled], bins.confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled],
                 width=width * 0.95, color="#d62728", alpha=0.35, label="gap to confidence")
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        axis.set_title(f"{name}: ECE {bins.ece:.4f}")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top probability)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
