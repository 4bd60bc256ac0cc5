"""Write a run folder's report.html from its best model and a set of labelled images.

A probe run's report needs no pass through the backbone: its validation features are
already computed, and the caller hands in the best head's probabilities. The model is loaded
all the same for the page's Grad-CAM, a backward pass of the few images it shows (grad_cam.py).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..data import Samples, eval_transform_uint8, normalize_batch
from ..errors import UserError
from ..files import read_json
from ..infer import best_model_logits
from ..models import Classifier
from ..run_folder import checkpoint
from ..run_folder import records as run_folder
from ..runtime import Runtime
from ..task import Task
from ..training import InferencePrecision
from ._grad_cam import CamTarget, find_target, grad_cam
from ._multilabel import write_multilabel_report
from ._page import write_report
from .cards import Explain, overlay_image, thumbnail_png

# images per backward pass: ViT-B/16 at 224 px keeps about 1 GB of activations for 8 of them
CAM_BATCH = 8


def report_run(run_dir: Path, samples: Samples, runtime: Runtime, *, batch_size: int = 64,
               workers: int | None = None, title: str | None = None, probs: torch.Tensor | None = None,
               calibration: dict | None = None, cache_dir: Path | None = None) -> Path:
    """Predict `samples` with the run's best model (unless `probs` are given) and write
    report.html and the PNG plots. `calibration`: the run's calibration record when `samples` are
    the validation split it was chosen on (its out-of-fold figures are then the fair ones to show).
    `cache_dir`: where the CPU engine's graph is kept."""
    model = None
    if probs is None:
        logits, model = best_model_logits(run_dir, samples, runtime, batch_size=batch_size, workers=workers,
                                          cache_dir=cache_dir)
        info = model.info
        probs, labels = Task.of(info).probabilities(logits, info.temperature), torch.tensor(samples.labels)
    else:
        info, labels = checkpoint.read_model_info(run_dir), torch.tensor(samples.labels)
    explain = _explainer(run_dir, model, samples, runtime)
    config_path = run_dir / run_folder.CONFIG_FILE
    settings = {}
    if config_path.is_file():
        import yaml

        settings = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        settings.pop("resolved", None)
    summary_path = run_dir / run_folder.SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else None
    if info.multi_label:

        return write_multilabel_report(run_dir, probs=probs.numpy(), targets=labels.numpy(),
                                       class_names=info.class_names, thresholds=info.thresholds,
                                       describe=samples.describe, load_image=samples.load, settings=settings,
                                       summary=summary, title=title or f"tlearn report: {info.name} in {run_dir.name}",
                                       explain=explain)
    return write_report(run_dir, probs=probs.numpy(), labels=labels.numpy(), class_names=info.class_names,
                        describe=samples.describe, load_image=samples.load, settings=settings, summary=summary,
                        title=title or f"tlearn report: {info.name} in {run_dir.name}", explain=explain,
                        calibration=calibration)


def _explainer(run_dir: Path, model: Classifier | None, samples: Samples, runtime: Runtime) -> Explain:
    """Grad-CAM of the images the page shows: each one as the model saw it, and its overlay. The
    best model is loaded here when the report had its probabilities without it."""
    def explain(indices: list[int], classes: list[int]) -> dict[int, tuple[str, str]]:
        from PIL import Image

        nonlocal model
        if model is None:
            model = checkpoint.load_model(run_dir).to(runtime.device)
        target, prep = find_target(model), model.info.preprocessing
        transform = eval_transform_uint8(prep)
        readable, inputs = [], []
        for index, class_index in zip(indices, classes):
            try:
                inputs.append(transform(samples.load(index, transform.decode_size)))
                readable.append((index, class_index))
            except (UserError, OSError):  # no longer readable: its card says so (report_cards.py)
                continue
        result = {}
        precision = InferencePrecision(runtime, -(-len(inputs) // CAM_BATCH), "Grad-CAM")  # --amp auto: timed
        for start in range(0, len(inputs), CAM_BATCH):
            batch, chosen = torch.stack(inputs[start:start + CAM_BATCH]), readable[start:start + CAM_BATCH]
            classes_tensor = torch.tensor([class_index for _, class_index in chosen], device=runtime.device)
            images = normalize_batch(batch.to(runtime.device), prep)
            cams = precision.run(functools.partial(_cams, model, images, classes_tensor, target), len(batch)).cpu()
            for (index, _), image, cam in zip(chosen, batch, cams):
                pixels = image.permute(1, 2, 0).numpy()
                result[index] = (thumbnail_png(Image.fromarray(pixels)),
                                 thumbnail_png(overlay_image(pixels, cam.numpy())))
        return result
    return explain


def _cams(model: Classifier, images: torch.Tensor, classes: torch.Tensor, target: CamTarget,
          runtime: Runtime) -> torch.Tensor:
    """Grad-CAM in the runtime's precision when that is bf16 (fp16's gradients could underflow: fp32)."""
    bf16 = runtime.amp_dtype == torch.bfloat16
    return grad_cam(model, images, classes, target, dtype=torch.bfloat16 if bf16 else None)
