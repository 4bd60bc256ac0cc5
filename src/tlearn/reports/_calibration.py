"""The report's reliability diagram: accuracy against confidence per bin, before and after the
temperature, with both ECEs (calibration.py). Saved as reliability.png beside report.html.

On the run's own validation split the 'after' is the out-of-fold table of calibration.json
(each image calibrated by a T fitted without it), not the stored T re-applied to the images it
was fitted on, which would flatter it. On other images (tlearn eval --report) both are recomputed.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ..files import atomic_write
from ..metrics import FOLDS, NUM_BINS, Reliability, reliability

RELIABILITY_FILE = "reliability.png"
# Why a run kept T = 1, for a page that has only summary.json's short decision.
KEPT_BECAUSE = {"not improved": "a fitted temperature did not lower the out-of-fold NLL on its validation split",
                "too few images": "its validation split had too few images to fit a temperature on",
                "at bound": "the temperature fitted on its validation split was at the search's bound"}


def reliability_section(run_dir: Path, probs: np.ndarray, labels: np.ndarray, summary: dict | None,
                        calibration: dict | None = None) -> str:
    """The section for a single-label report: `probs` are the calibrated probabilities the page shows.
    `calibration` (the run's calibration.json record) when these are its validation images: the
    diagram then shows its tables; otherwise the uncalibrated probabilities are recovered with the
    run's temperature (softmax(T x log p))."""
    if len(labels) == 0:
        return ""
    if calibration is not None:
        temperature = float(calibration["temperature"])
        before = Reliability.from_dict(calibration["reliability_uncalibrated"])
        after = Reliability.from_dict(calibration["reliability"])
        text = _validation_text(len(labels), calibration)
    else:
        temperature = float((summary or {}).get("temperature", 1.0))
        before, after = _recomputed(probs, labels, temperature)
        text = _other_images_text(len(labels), before.ece, after.ece, temperature, summary)
    panels = [(before, "T = 1 (kept)")] if temperature == 1.0 else [
        (before, "before (T = 1)"), (after, f"after (T = {temperature:.2f})"
                                     + (", out-of-fold" if calibration is not None else ""))]
    png = _diagram_png(panels)
    atomic_write(run_dir / RELIABILITY_FILE, png)
    text = (f"<p>{len(labels)} images in {NUM_BINS} equal-width bins of top probability. {text} "
            "Bars on the diagonal: the stated confidence is the accuracy.</p>")
    data = base64.b64encode(png).decode()
    return (f"<section><h2>Calibration</h2>{text}<div><img alt='{html.escape(RELIABILITY_FILE)}' "
            f"src='data:image/png;base64,{data}'></div></section>")


def _recomputed(probs: np.ndarray, labels: np.ndarray, temperature: float) -> tuple[Reliability, Reliability]:
    probs = np.asarray(probs, dtype=np.float64)
    logits = np.log(np.clip(probs, 1e-300, None)) * temperature
    raw = np.exp(logits - logits.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    return reliability(raw, labels), reliability(probs, labels)


def _validation_text(count: int, calibration: dict) -> str:
    """The run's validation split: the out-of-fold ECE, or that T = 1 was kept and why."""
    before, after = calibration["ece_uncalibrated"], calibration["ece"]
    if float(calibration["temperature"]) == 1.0:
        reason = calibration.get("reason", "")
        return (f"Expected calibration error (ECE) <b>{before:.4f}</b>. The run keeps T = 1 (uncalibrated "
                f"confidences){': ' + html.escape(reason) if reason else ''}.")
    return (f"Expected calibration error (ECE) {before:.4f} before, <b>{after:.4f}</b> after temperature scaling, "
            f"out-of-fold: the run uses T = {float(calibration['temperature']):.3f}, fitted on all {count} validation "
            f"images, but each image's 'after' confidence here comes from a T fitted on the other {FOLDS - 1} of "
            f"{FOLDS} folds of the split (averaged over several random cuts into folds), so the figure is not "
            f"judged on the images its T was fitted on.")


def _other_images_text(count: int, before: float, after: float, temperature: float, summary: dict | None) -> str:
    if temperature == 1.0:
        reason = KEPT_BECAUSE.get((summary or {}).get("calibration"), "it has no fitted temperature")
        return f"Expected calibration error (ECE) <b>{before:.4f}</b>; the run keeps T = 1: {reason}."
    return (f"Expected calibration error (ECE) {before:.4f} before, <b>{after:.4f}</b> after temperature scaling "
            f"(T = {temperature:.3f}, chosen on the run's validation split: on other images this is a fair test "
            "of it).")


def _diagram_png(panels: list[tuple[Reliability, str]]) -> bytes:
    """One panel per (bins, name): before and after, or one when T = 1 leaves nothing to compare."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 1.0 / len(panels[0][0].counts)
    centers = (np.arange(len(panels[0][0].counts)) + 0.5) * width
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), sharey=True, squeeze=False)
    axes = axes[0]
    for axis, (bins, name) in zip(axes, panels):
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
