"""Write a run folder's report.html from its best model and a set of labelled images.

A probe run's report needs no pass through the backbone: its validation features are
already computed, and the caller hands in the best head's probabilities.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, run_folder
from .data.samples import Samples
from .files import read_json
from .inference import classify
from .report_page import write_report
from .runtime import Runtime


def report_run(run_dir: Path, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
               workers: int | None = None, title: str | None = None, probs: torch.Tensor | None = None,
               cache_dir: Path | None = None) -> Path:
    """Predict `samples` with the run's best model (unless `probs` are given) and write
    report.html and the PNG plots. `cache_dir`: where the CPU engine's graph is kept."""
    if probs is None:
        model = checkpoint.load_model(run_dir).to(runtime.device)
        logits, labels = classify(model, samples, runtime, batch_size=batch_size, workers=workers,
                                  cache_dir=cache_dir)
        info = model.info
        probs = logits.sigmoid() if info.multi_label else logits.softmax(dim=1)
    else:
        info, labels = checkpoint.read_model_info(run_dir), torch.tensor(samples.labels)
    config_path = run_dir / run_folder.CONFIG_FILE
    settings = {}
    if config_path.is_file():
        import yaml

        settings = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        settings.pop("resolved", None)
    summary_path = run_dir / run_folder.SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else None
    if info.multi_label:
        from .report_multilabel import write_multilabel_report

        return write_multilabel_report(run_dir, probs=probs.numpy(), targets=labels.numpy(),
                                       class_names=info.class_names, thresholds=info.thresholds,
                                       describe=samples.describe, load_image=samples.load, settings=settings,
                                       summary=summary, title=title or f"tlearn report: {info.name} in {run_dir.name}")
    return write_report(run_dir, probs=probs.numpy(), labels=labels.numpy(), class_names=info.class_names,
                        describe=samples.describe, load_image=samples.load, settings=settings, summary=summary,
                        title=title or f"tlearn report: {info.name} in {run_dir.name}")
