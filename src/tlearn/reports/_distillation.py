"""The report's distillation section: the teacher, and both models' accuracy and latency."""
from __future__ import annotations

import html


def distillation_section(summary: dict | None) -> str:
    """Empty unless the run was distilled (summary.json's "distillation", training/distillation.py)."""
    figures = (summary or {}).get("distillation")
    if not figures:
        return ""
    rows = [("", "teacher", "student (this run)"),
            ("model", figures["teacher_model"], summary.get("model", "")),
            ("input size", f"{figures['teacher_input_size']} px", f"{figures['student_input_size']} px"),
            ("val top-1 (this run's validation split)", f"{figures['teacher_val_top1']:.4f}",
             f"{summary.get('val_top1', 0.0):.4f}"),
            (f"latency per image ({figures['latency_device']}, batch 1)", f"{figures['teacher_latency_ms']:.2f} ms",
             f"{figures['student_latency_ms']:.2f} ms")]
    head, *body = rows
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in body)
    header = "<tr>" + "".join(f"<th>{html.escape(v)}</th>" for v in head) + "</tr>"
    unlabeled = figures.get("num_unlabeled", 0)
    note = (f"Distilled from the run <code>{html.escape(figures['teacher_run'])}</code>: KL at temperature "
            f"{figures['temperature']:g} x weight {figures['distill_weight']:g}, labels x weight "
            f"{figures['label_weight']:g}" + (f", {unlabeled} unlabeled images" if unlabeled else "")
            + f"; the student is {figures['speedup']:.2f}x faster per image.")
    return (f"<section id='distillation'><h2>Distillation</h2><p>{note}</p>"
            f"<table class='kv'>{header}{cells}</table></section>")
