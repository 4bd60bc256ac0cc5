"""The report page: report.html, one self-contained page (images inline), and its PNG plots.

It draws what it is given (predicted probabilities, labels, the run's files); run_report.py
decides what to predict.

Results first: a headline (top-1, balanced accuracy, macro-F1; a warning when the classes are
imbalanced), a grid of sample validation predictions, loss/accuracy curves across stages,
per-class precision/recall/F1, the confusion matrix as a heat map, the validation images the
model got most confidently wrong, and last the run's settings, folded (<details>). With an
`explain` (run_report.py), the images come with their Grad-CAM overlays. The plots are saved as
PNG files too (matplotlib, Agg backend).
"""
from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

import numpy as np

from ..files import atomic_write
from ..metrics import WARN_RATIO, imbalance_ratio
from ..run_folder import METRICS_FILE
from ._calibration import reliability_section
from ._distillation import distillation_section
from .cards import Explain, card, choose_samples, grid_note, image_pictures
from .html_page import html_page

REPORT_FILE = "report.html"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion.png"
MAX_WRONG = 24


def write_report(run_dir: Path, *, probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                 describe, load_image, settings: dict, summary: dict | None = None,
                 title: str = "tlearn run report", explain: Explain | None = None,
                 calibration: dict | None = None) -> Path:
    """Write report.html, curves.png and confusion.png into `run_dir`; `explain` adds Grad-CAM;
    `calibration`: the run's calibration record when these are its validation images."""
    import matplotlib

    matplotlib.use("Agg")
    predictions = probs.argmax(1)
    samples, wrong = choose_samples(predictions == labels), _most_confident_wrong(probs, labels)
    pictures = image_pictures([*samples, *wrong], predictions, load_image, explain)

    sections = [_headline_section(labels, predictions, len(class_names), summary),
                distillation_section(summary),
                reliability_section(run_dir, probs, labels, summary, calibration),
                _samples_section(samples, pictures, probs, labels, class_names, describe)]
    curves = _curves_png(run_dir)
    if curves is not None:
        sections.append(_figure_section("Training curves", curves, CURVES_FILE))
    sections.append(_per_class_section(labels, predictions, class_names))
    confusion_png = _confusion_png(labels, predictions, class_names)
    atomic_write(run_dir / CONFUSION_FILE, confusion_png)
    sections.append(_figure_section("Confusion matrix (rows: true, columns: predicted)", confusion_png,
                                    CONFUSION_FILE, scroll=True))
    sections.append(_wrong_section(wrong, pictures, probs, labels, class_names, describe))
    sections.append(_settings_section(settings, summary))
    page = html_page(title, "\n".join(sections), PAGE_CSS)
    path = run_dir / REPORT_FILE
    atomic_write(path, page)
    return path


def _settings_section(settings: dict, summary: dict | None) -> str:
    rows = []
    if summary:
        for key in ("task", "val_top1", "val_top5", "val_balanced_acc", "val_map", "val_f1_micro", "val_f1_macro",
                    "balance", "train_imbalance_ratio", "best_epoch", "train_seconds", "num_train", "num_val",
                    "skipped_files"):
            if key in summary:
                rows.append((key, summary[key]))
    for section, values in settings.items():
        if isinstance(values, dict):
            rows += [(f"{section}.{k}", v) for k, v in values.items() if not isinstance(v, (dict, list))]
        else:
            rows.append((section, values))
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return (f"<section><details id='settings'><summary><h2>Run settings ({len(rows)})</h2></summary>"
            f"<table class='kv'>{cells}</table></details></section>")


def _headline_section(labels: np.ndarray, predictions: np.ndarray, num_classes: int, summary: dict | None) -> str:
    """Top-1 beside balanced accuracy and macro-F1, and a warning for imbalanced classes (training
    split, from the summary, or these images)."""
    if len(labels) == 0:
        return "<section><p>No images to evaluate.</p></section>"
    top1 = float((labels == predictions).mean())
    matrix = confusion_matrix(labels, predictions, num_classes)
    _, recall, f1_scores, support = per_class_scores(matrix)
    balanced = float(recall[support > 0].mean())  # scikit-learn's balanced_accuracy_score
    f1 = float(f1_scores[(support > 0) | (matrix.sum(axis=0) > 0)].mean())  # f1_score(average="macro")
    text = (f"<p class='headline'>{len(labels)} images: top-1 <b>{top1:.4f}</b> · balanced accuracy "
            f"<b>{balanced:.4f}</b> · macro-F1 <b>{f1:.4f}</b></p>")
    warnings = []
    train_ratio = (summary or {}).get("train_imbalance_ratio", 1.0)
    if train_ratio >= WARN_RATIO:
        warnings.append(f"the training split is imbalanced: its largest class has {train_ratio:.0f}x the images "
                        f"of its smallest (--balance {html.escape(str(summary.get('balance', 'none')))})")
    ratio = imbalance_ratio(np.bincount(labels, minlength=num_classes).tolist())
    if ratio >= WARN_RATIO:
        warnings.append(f"these images are imbalanced: the largest class has {ratio:.0f}x the images of the "
                        "smallest, so top-1 mostly measures the large classes")
    text += "".join(f"<p class='warning'>Warning: {w}.</p>" for w in warnings)
    return f"<section>{text}</section>"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _curves_png(run_dir: Path) -> bytes | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        return None
    rows = list(csv.DictReader(metrics.open(encoding="utf-8")))
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        loss_ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    for key, label in (("train_top1", "train top-1"), ("val_top1", "val top-1"), ("val_top5", "val top-5"),
                       ("train_f1_micro", "train micro-F1 at 0.5"), ("val_map", "val mAP"),
                       ("val_f1_micro", "val micro-F1")):
        if all(r.get(key) for r in rows):  # the figures of the run's task (multi-label: mAP and F1)
            acc_ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=label)
    for axis, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for i in range(1, len(rows)):
            if rows[i]["stage"] != rows[i - 1]["stage"]:  # stage boundary
                axis.axvline(epochs[i] - 0.5, color="grey", linestyle="--")
                axis.text(epochs[i] - 0.45, axis.get_ylim()[1], rows[i]["stage"], va="top", fontsize=8)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(name)
        axis.legend()
        axis.grid(alpha=0.3)
    png = _png(figure)
    atomic_write(run_dir / CURVES_FILE, png)
    return png


def _confusion_png(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> bytes:
    import matplotlib.pyplot as plt

    count = len(class_names)
    matrix = confusion_matrix(labels, predictions, count)
    side = max(5.0, 0.28 * count + 2)  # grows with the classes: 100 classes stay readable (scroll)
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    font = 9 if count <= 20 else 6
    axis.set_xticks(range(count), class_names, rotation=90, fontsize=font)
    axis.set_yticks(range(count), class_names, fontsize=font)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if count <= 20:
        peak = matrix.max() or 1
        for i in range(count):
            for j in range(count):
                axis.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8,
                          color="white" if matrix[i, j] > peak / 2 else "black")
    return _png(figure)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, count: int) -> np.ndarray:
    """Rows: true class, columns: predicted (numpy: scikit-learn's import alone takes about 2 s)."""
    index = np.asarray(labels, dtype=np.int64) * count + np.asarray(predictions, dtype=np.int64)
    return np.bincount(index, minlength=count * count).reshape(count, count)


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class, 0 where undefined (scikit-learn's zero_division=0)."""
    correct = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(correct), where=total > 0)
    return precision, recall, f1, support


def _figure_section(title: str, png: bytes, filename: str, scroll: bool = False) -> str:
    data = base64.b64encode(png).decode()
    style = " class='scroll'" if scroll else ""
    return (f"<section><h2>{html.escape(title)}</h2><div{style}><img alt='{filename}' "
            f"src='data:image/png;base64,{data}'></div></section>")


def _per_class_section(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> str:
    precision, recall, f1, support = per_class_scores(confusion_matrix(labels, predictions, len(class_names)))
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{p:.3f}</td><td>{r:.3f}</td><td>{f:.3f}</td><td>{s}</td></tr>"
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support))
    accuracy = float((labels == predictions).mean()) if len(labels) else 0.0
    return (f"<section><h2>Per-class metrics</h2><p>{len(labels)} images, top-1 accuracy {accuracy:.4f}</p>"
            f"<div class='scroll short'><table><tr><th>class</th><th>precision</th><th>recall</th>"
            f"<th>F1</th><th>support</th></tr>{rows}</table></div></section>")


def _most_confident_wrong(probs: np.ndarray, labels: np.ndarray) -> list[int]:
    predictions = probs.argmax(1)
    wrong = np.flatnonzero(predictions != labels)
    return [int(i) for i in wrong[np.argsort(-probs[wrong, predictions[wrong]], kind="stable")][:MAX_WRONG]]


def _prediction_card(index: int, pictures: dict, probs, labels, class_names, describe) -> str:
    predicted = int(probs[index].argmax())
    true, pred = html.escape(class_names[labels[index]]), html.escape(class_names[predicted])
    verdict = "right" if predicted == labels[index] else "wrong"
    caption = (f"<span class='{verdict}'>{verdict}</span><br>true <b>{true}</b><br>predicted <b>{pred}</b> "
               f"({probs[index, predicted]:.2f})")
    return card(pictures[index], str(describe(index)), caption)


def _samples_section(samples: list[int], pictures: dict, probs, labels, class_names, describe) -> str:
    if not samples:
        return ""
    cards = "".join(_prediction_card(i, pictures, probs, labels, class_names, describe) for i in samples)
    return (f"<section id='samples'><h2>Sample predictions ({len(samples)} validation images, right and wrong)"
            f"</h2>{grid_note(pictures)}<div class='grid'>{cards}</div></section>")


def _wrong_section(wrong: list[int], pictures: dict, probs, labels, class_names, describe) -> str:
    if len(wrong) == 0:
        return "<section><h2>Most confident mistakes</h2><p>No validation image was misclassified.</p></section>"
    cards = "".join(_prediction_card(i, pictures, probs, labels, class_names, describe) for i in wrong)
    return f"<section id='mistakes'><h2>Most confident mistakes</h2><div class='grid'>{cards}</div></section>"


PAGE_CSS = """table.kv th { font-weight: 600; white-space: nowrap; }
.scroll { overflow: auto; max-height: 900px; border: 1px solid #eee; }
.scroll.short { max-height: 480px; display: inline-block; }
.scroll img { max-width: none; }
img { max-width: 100%; }
.headline { font-size: 1.2em; } .warning { color: #a40; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 150px; font-size: 12px; } figure img { image-rendering: pixelated; }
figure.pair { width: 236px; } figure.pair img { width: 116px; image-rendering: auto; }
.pictures { display: flex; gap: 4px; }
.missing { width: 128px; height: 64px; background: #eee; color: #777; display: flex; align-items: center;
  justify-content: center; }
.right { color: #262; } .wrong { color: #a22; font-weight: 600; } .note { color: #555; font-size: 0.9em; }
details summary { cursor: pointer; } details summary h2 { display: inline; }
"""
