"""Write a run folder's report.html from its best model and a set of labelled images.

A probe run's report needs no pass through the backbone: its validation features are
already computed, and the caller hands in the best head's probabilities.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import checkpoint, run_folder
from .calibration import probabilities
from .data.samples import Samples
from .files import read_json
from .inference import classify
from .models.classifier import ModelInfo
from .report_page import write_report
from .runtime import Runtime


def best_model_logits(run_dir: Path, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
                      workers: int | None = None, cache_dir: Path | None = None) -> tuple[torch.Tensor, ModelInfo]:
    """The run's best model's logits of `samples`, in order, and its description."""
    model = checkpoint.load_model(run_dir).to(runtime.device)
    logits, _ = classify(model, samples, runtime, batch_size=batch_size, workers=workers, cache_dir=cache_dir)
    return logits, model.info


def report_run(run_dir: Path, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
               workers: int | None = None, title: str | None = None, probs: torch.Tensor | None = None,
               cache_dir: Path | None = None) -> Path:
    """Predict `samples` with the run's best model (unless `probs` are given) and write
    report.html and the PNG plots. `cache_dir`: where the CPU engine's graph is kept."""
    if probs is None:
        logits, info = best_model_logits(run_dir, samples, runtime, batch_size=batch_size, workers=workers,
                                         cache_dir=cache_dir)
        probs, labels = probabilities(logits, info), torch.tensor(samples.labels)
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
