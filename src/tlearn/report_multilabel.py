"""The report page of a multi-label run: mAP and F1 at the stored thresholds, per-class AP, F1,
threshold and support, the training curves, and the worst-scored validation images (highest
binary cross-entropy summed over the classes), with their true and predicted labels."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .files import atomic_write
from .multilabel import score
from .report_page import (
    _PAGE,
    CURVES_FILE,
    MAX_WRONG,
    REPORT_FILE,
    _curves_png,
    _figure_section,
    _settings_section,
    thumbnail_png,
)


def write_multilabel_report(run_dir: Path, *, probs: np.ndarray, targets: np.ndarray, class_names: list[str],
                            thresholds: list[float], describe, load_image, settings: dict,
                            summary: dict | None = None, title: str = "tlearn run report") -> Path:
    """Write report.html and curves.png into `run_dir` for multi-hot `targets` and sigmoid `probs`."""
    import matplotlib

    matplotlib.use("Agg")
    targets = np.asarray(targets).reshape(len(probs), len(class_names)) > 0
    thresholds = list(thresholds) or [0.5] * len(class_names)
    result = score(probs, targets, thresholds)
    sections = [_headline(result), _settings_section(settings, summary)]
    curves = _curves_png(run_dir)
    if curves is not None:
        sections.append(_figure_section("Training curves", curves, CURVES_FILE))
    sections.append(_per_class(result, class_names))
    sections.append(_worst(probs, targets, thresholds, class_names, describe, load_image))
    path = run_dir / REPORT_FILE
    atomic_write(path, _PAGE.format(title=html.escape(title), body="\n".join(sections)))
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


def _worst(probs: np.ndarray, targets: np.ndarray, thresholds: list[float], class_names: list[str], describe,
           load_image) -> str:
    """The images with the highest binary cross-entropy summed over the classes."""
    if len(probs) == 0:
        return ""
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    loss = -(targets * np.log(clipped) + (~targets) * np.log(1 - clipped)).sum(axis=1)
    worst = np.argsort(-loss, kind="stable")[:MAX_WRONG]
    cards = []
    for index in worst:
        true = ", ".join(n for n, t in zip(class_names, targets[index]) if t) or "(none)"
        predicted = ", ".join(f"{n} ({p:.2f})" for n, p, t in zip(class_names, probs[index], thresholds)
                              if p >= t) or "(none)"
        name = html.escape(str(describe(int(index))))
        cards.append(f"<figure><img alt='{name}' title='{name}' src='data:image/png;base64,"
                     f"{thumbnail_png(load_image(int(index)))}'><figcaption>true <b>{html.escape(true)}</b><br>"
                     f"predicted <b>{html.escape(predicted)}</b><br>loss {loss[index]:.2f}</figcaption></figure>")
    return ("<section><h2>Worst-scored images (binary cross-entropy over all classes)</h2><div class='grid'>"
            + "".join(cards) + "</div></section>")
