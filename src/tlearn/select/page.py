"""What `tlearn select` writes and prints: leaderboard.csv, leaderboard.html (the table and an
accuracy-vs-speed scatter, one self-contained page: the plot is an inline PNG, no external request),
select.json (everything, skipped candidates included) and the text table."""
from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
from typing import TYPE_CHECKING

from ..files import atomic_write, write_json
from ..reports.html_page import html_page

if TYPE_CHECKING:  # select.py imports this module: the page takes its Selection, never imports it
    from .selection import Selection

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_HTML = "leaderboard.html"
SELECT_JSON = "select.json"
COLUMNS = ["rank", "model", "image_size", "val_top1", "images_per_s", "params", "seconds"]
EXTRA_COLUMNS = ["val_balanced_acc", "val_map", "feature_dim", "speed_from", "estimate_seconds", "l2"]


def leaderboard_rows(selection: Selection) -> list[dict[str, str]]:
    """The csv's rows, best first, as text (empty cells for the other task's metrics)."""
    rows = []
    for rank, result in enumerate(selection.results, 1):
        rows.append({"rank": str(rank), "model": result.model, "image_size": str(result.image_size),
                     "val_top1": _figure(result.val_top1), "images_per_s": f"{result.images_per_s:.1f}",
                     "params": str(result.params), "seconds": f"{result.seconds:.2f}",
                     "val_balanced_acc": _figure(result.val_balanced_acc), "val_map": _figure(result.val_map),
                     "feature_dim": str(result.feature_dim), "speed_from": result.speed_from,
                     "estimate_seconds": f"{result.estimate_seconds:.2f}", "l2": f"{result.l2:g}"})
    return rows


def _figure(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_outputs(selection: Selection) -> None:
    out = selection.out
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS + EXTRA_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(leaderboard_rows(selection))
    atomic_write(out / LEADERBOARD_CSV, buffer.getvalue())
    atomic_write(out / LEADERBOARD_HTML, leaderboard_page(selection))
    write_json(out / SELECT_JSON, {
        "task": selection.task, "metric": selection.metric, "data": selection.data,
        "num_train": selection.num_train, "num_val": selection.num_val, "seconds": round(selection.seconds, 2),
        "budget": selection.budget, "results": [dataclasses.asdict(r) for r in selection.results],
        "skipped": [dataclasses.asdict(s) for s in selection.skipped],
        "best_run": str(selection.best_run) if selection.best_run else None,
        "best_summary": selection.best_summary})


def format_leaderboard(selection: Selection) -> str:
    """The table as the command line prints it, then the skipped candidates."""
    multi = selection.task == "multi-label"
    header = ["rank", "model", "size", "val mAP" if multi else "val top-1", "balanced", "images/s", "params",
              "seconds"]
    rows = [[str(rank), r.model, str(r.image_size), f"{(r.val_map if multi else r.val_top1):.4f}",
             "" if multi else f"{r.val_balanced_acc:.4f}", f"{r.images_per_s:,.0f}", f"{r.params / 1e6:.1f}M",
             f"{r.seconds:.1f}"] for rank, r in enumerate(selection.results, 1)]
    if multi:
        header.pop(4)
        for row in rows:
            row.pop(4)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 1 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    if not rows:
        lines.append("(no candidate ran)")
    lines += [f"skipped {item.describe()}" for item in selection.skipped]
    lines.append(f"{len(selection.results)} candidate(s) in {selection.seconds:.1f} s; "
                 f"{selection.out / LEADERBOARD_CSV}, {selection.out / LEADERBOARD_HTML}")
    return "\n".join(lines)


def leaderboard_page(selection: Selection) -> str:
    metric = "val mAP" if selection.task == "multi-label" else "val top-1"
    intro = (f"<p>{html.escape(selection.data)}: {selection.num_train} training and {selection.num_val} "
             f"validation images, {selection.task}. Each candidate: a linear probe (L-BFGS logistic regression, "
             f"L2 chosen on the validation split) on its frozen backbone's features; images/s is the feature "
             f"extraction's (decoding included), params the backbone's. {len(selection.results)} candidate(s) "
             f"in {selection.seconds:.1f} s" + (f", budget {selection.budget:g} s" if selection.budget else "")
             + ".</p>")
    columns = COLUMNS + ["val_balanced_acc" if selection.task != "multi-label" else "val_map", "speed_from"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row[c])}</td>" for c in columns) + "</tr>"
                   for row in leaderboard_rows(selection))
    sections = [intro, f"<section><h2>Leaderboard</h2><table><tr>{head}</tr>{body}</table></section>"]
    if selection.results:
        png = base64.b64encode(scatter_png(selection, metric)).decode()
        sections.append(f"<section><h2>{metric} vs speed</h2><img alt='{metric} vs images/s' "
                        f"src='data:image/png;base64,{png}'></section>")
    if selection.skipped:
        items = "".join(f"<li>{html.escape(item.describe())}</li>" for item in selection.skipped)
        sections.append(f"<section><h2>Skipped</h2><ul>{items}</ul></section>")
    if selection.best_run:
        sections.append(f"<section><h2>Fine-tuned</h2><p>The best candidate, trained two-stage: "
                        f"{html.escape(str(selection.best_run))}</p></section>")
    return html_page("tlearn select: which backbone?", "\n".join(sections), _CSS)


def scatter_png(selection: Selection, metric: str) -> bytes:
    """Each candidate at (images/s, metric); a model's sizes joined by a line, the best starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    models = list(dict.fromkeys(r.model for r in selection.results))
    colours = plt.get_cmap("tab10")
    for index, model in enumerate(models):
        points = sorted((r for r in selection.results if r.model == model), key=lambda r: r.image_size)
        xs = [r.images_per_s for r in points]
        ys = [r.val_map if r.val_map is not None else r.val_top1 for r in points]
        axes.plot(xs, ys, "o-", color=colours(index % 10), label=model)
        for r, x, y in zip(points, xs, ys):
            axes.annotate(f"{r.image_size} px", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    best = selection.results[0]
    axes.plot([best.images_per_s], [best.val_map if best.val_map is not None else best.val_top1], "*",
              markersize=18, color="gold", markeredgecolor="black", label="best", zorder=5)
    speeds = [r.images_per_s for r in selection.results]
    if max(speeds) > 10 * min(speeds):
        axes.set_xscale("log")
    axes.set_xlabel("feature extraction, images/s (higher is faster)")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


_CSS = """body { max-width: 1100px; } th, td { text-align: right; }
th { font-weight: 600; } td:nth-child(2), th:nth-child(2) { text-align: left; }
img { max-width: 100%; }
"""
