"""The report page of a multi-label run, results first like the single-label page: mAP and F1 at
the stored thresholds, a grid of sample predictions, the training curves, per-class AP, F1,
threshold and support, the worst-scored validation images (highest binary cross-entropy summed
over the classes) with their true and predicted labels, and the settings, folded. Grad-CAM
overlays (with `explain`) are for each image's highest-scored class."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..files import atomic_write
from ..metrics import score
from ._page import (
    CURVES_FILE,
    MAX_WRONG,
    PAGE_CSS,
    REPORT_FILE,
    _curves_png,
    _figure_section,
    _settings_section,
)
from .cards import Explain, card, choose_samples, grid_note, image_pictures
from .html_page import html_page


def write_multilabel_report(run_dir: Path, *, probs: np.ndarray, targets: np.ndarray, class_names: list[str],
                            thresholds: list[float], describe, load_image, settings: dict,
                            summary: dict | None = None, title: str = "tlearn run report",
                            explain: Explain | None = None) -> Path:
    """Write report.html and curves.png into `run_dir` for multi-hot `targets` and sigmoid `probs`."""
    import matplotlib

    matplotlib.use("Agg")
    targets = np.asarray(targets).reshape(len(probs), len(class_names)) > 0
    thresholds = list(thresholds) or [0.5] * len(class_names)
    result = score(probs, targets, thresholds)
    loss = _loss(probs, targets)
    exact = ((probs >= np.asarray(thresholds)) == targets).all(axis=1)
    samples, worst = choose_samples(exact), [int(i) for i in np.argsort(-loss, kind="stable")[:MAX_WRONG]]
    pictures = image_pictures([*samples, *worst], probs.argmax(1) if len(probs) else probs, load_image, explain)
    cards = _Cards(probs, targets, thresholds, loss, class_names, describe, pictures)
    sections = [_headline(result),
                # no reliability diagram: a multi-label run is not calibrated (calibration.py)
                _grid("samples", f"Sample predictions ({len(samples)} validation images, all labels right and "
                      "not)", samples, cards)]
    curves = _curves_png(run_dir)
    if curves is not None:
        sections.append(_figure_section("Training curves", curves, CURVES_FILE))
    sections.append(_per_class(result, class_names))
    sections.append(_grid("mistakes", "Worst-scored images (binary cross-entropy over all classes)", worst, cards))
    sections.append(_settings_section(settings, summary))
    path = run_dir / REPORT_FILE
    atomic_write(path, html_page(title, "\n".join(sections), PAGE_CSS))
    return path


def _headline(result) -> str:
    if result.count == 0:
        return "<section><p>No images to evaluate.</p></section>"
    return (f"<section><p class='headline'>{result.count} images (multi-label): mAP <b>{result.map:.4f}</b> · "
            f"micro-F1 <b>{result.f1_micro:.4f}</b> · macro-F1 <b>{result.f1_macro:.4f}</b> at the stored "
            f"thresholds (at 0.5: micro-F1 {result.f1_micro_at_half:.4f}, macro-F1 "
            f"{result.f1_macro_at_half:.4f})</p></section>")


def _per_class(result, class_names: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'–' if np.isnan(ap) else f'{ap:.3f}'}</td><td>{f1:.3f}</td>"
        f"<td>{t:.3f}</td><td>{n}</td></tr>"
        for name, ap, f1, t, n in zip(class_names, result.ap, result.f1, result.thresholds, result.support))
    return ("<section><h2>Per-class metrics</h2><div class='scroll short'><table><tr><th>class</th>"
            "<th>average precision</th><th>F1 at threshold</th><th>threshold</th><th>support</th></tr>"
            f"{rows}</table></div></section>")


def _loss(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each image's binary cross-entropy summed over the classes."""
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    return -(targets * np.log(clipped) + (~targets) * np.log(1 - clipped)).sum(axis=1)


class _Cards:
    """An image's card: its pictures, true and predicted labels, and loss."""

    def __init__(self, probs, targets, thresholds, loss, class_names, describe, pictures):
        self.probs, self.targets, self.thresholds, self.loss = probs, targets, thresholds, loss
        self.class_names, self.describe, self.pictures = class_names, describe, pictures

    def __call__(self, index: int) -> str:
        names = self.class_names
        true = ", ".join(n for n, t in zip(names, self.targets[index]) if t) or "(none)"
        predicted = ", ".join(f"{n} ({p:.2f})" for n, p, t in zip(names, self.probs[index], self.thresholds)
                              if p >= t) or "(none)"
        return card(self.pictures[index], str(self.describe(index)),
                    f"true <b>{html.escape(true)}</b><br>predicted <b>{html.escape(predicted)}</b><br>"
                    f"loss {self.loss[index]:.2f}")


def _grid(anchor: str, title: str, indices: list[int], cards: _Cards) -> str:
    if not indices:
        return ""
    note = grid_note(cards.pictures, "the highest-scored class")
    return (f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{note}<div class='grid'>"
            + "".join(cards(i) for i in indices) + "</div></section>")
