"""A trained classifier loaded from its run folder, with what it needs to predict: preprocessing,
class names, calibration and the confidence threshold (`tlearn.load`, `tlearn.predict`)."""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data import Preprocessing, eval_transform, open_rgb
from ..hub import download_model, is_hub_name, load_hub_model
from ..metrics import predict_multi_label
from ..models import Classifier
from ..run_folder import checkpoint
from ..task import Task
from ._tta import average_views, views_for, views_transform
from .calibration import mark_unknown, resolve_min_confidence

logger = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A trained classifier with everything needed to use it: preprocessing and class names."""

    model: Classifier
    preprocessing: Preprocessing
    class_names: list[str]
    run_dir: Path | None = None  # where it was loaded from: predict's --coverage reads its calibration.json

    @property
    def task(self) -> Task:
        return Task.of(self.model.info)

    @property
    def multi_label(self) -> bool:
        return self.task.multi_label

    @property
    def label_join(self) -> str:
        """How a multi-label run writes an image's labels: as its labels table joined them."""
        return self.model.info.label_delim or " "

    @functools.cached_property
    def transform(self):
        return eval_transform(self.preprocessing)

    def predict(self, images: Iterable[str | Path | Image.Image | torch.Tensor] | str | Path,
                top_k: int = 1, batch_size: int = 32, *, tta: bool = False, tta_crops: int = 1,
                min_confidence: float | None = None, coverage: float | None = None) -> list[dict[str, Any]]:
        """Top-k labels and (calibrated) probabilities for paths, PIL images, or preprocessed tensors.

        Inputs are decoded a batch at a time, so a long list of paths never sits in memory decoded.
        `tta`: average the logits of each image and its horizontal flip; `tta_crops=5`: of five
        crops (tta.py). A preprocessed tensor is then its views, (V, C, H, W).
        Below `min_confidence` (or the threshold answering `coverage` of the validation images; by
        default the run's own, from train --coverage) the label is "unknown".
        """
        if isinstance(images, (str, Path, Image.Image, torch.Tensor)):
            images = [images]
        transform = self.views_transform(tta, tta_crops)
        threshold = self.min_confidence(min_confidence, coverage)
        warn_if_views_and_threshold(transform, threshold)
        results: list[dict[str, Any]] = []
        for batch in _batched(images, batch_size):
            results += self.predict_batch(torch.stack([self.prepare(item, transform) for item in batch]), top_k,
                                          threshold)
        return results

    def min_confidence(self, min_confidence: float | None = None, coverage: float | None = None) -> float | None:
        """The confidence threshold predict applies (run_calibration.resolve_min_confidence)."""
        return resolve_min_confidence(self.model.info, self.run_dir, min_confidence, coverage)

    def views_transform(self, tta: bool = False, tta_crops: int = 1):
        """The transform of `--tta` / `--tta-crops` (None: the plain image)."""
        views = views_for(tta, tta_crops)
        return None if views is None else views_transform(self.preprocessing, views)

    @torch.inference_mode()
    def predict_batch(self, batch: torch.Tensor, top_k: int = 1,
                      min_confidence: float | None = None) -> list[dict[str, Any]]:
        """Top-k of a batch of preprocessed images (what `tlearn predict` feeds); "unknown" below
        `min_confidence` (a number: `min_confidence()` resolves flags). Multi-label: the labels at or
        above their thresholds ("labels", "probs") and every class's probability ("scores")."""
        self.model.eval()
        views = batch.shape[1] if batch.ndim == 5 else 1  # test-time augmentation: (images, views, C, H, W)
        inputs = batch.flatten(0, 1) if batch.ndim == 5 else batch
        logits = average_views(self.model(inputs.to(next(self.model.parameters()).device)).float(), views)
        return self.answer(logits, top_k, min_confidence)

    def answer(self, logits: torch.Tensor, top_k: int = 1, min_confidence: float | None = None) -> list[dict[str, Any]]:
        """predict_batch's rows from logits (N, classes), whichever engine computed them (eager PyTorch,
        onnxruntime, the int8 graph): calibrated probabilities, top-k, "unknown", multi-label thresholds."""
        logits = logits.float().cpu()
        probs = self.task.probabilities(logits, self.model.info.temperature)  # calibrated: softmax(logits / T)
        if self.multi_label:
            return predict_multi_label(probs, self.model.info.thresholds, self.class_names)
        values, indices = probs.topk(min(top_k, len(self.class_names)), dim=1)
        return mark_unknown([{"labels": [self.class_names[i] for i in row_indices], "probs": row_values,
                              "label": self.class_names[row_indices[0]], "prob": row_values[0]}
                             for row_values, row_indices in zip(values.tolist(), indices.tolist())], min_confidence)

    def prepare(self, item: str | Path | Image.Image | torch.Tensor, transform=None) -> torch.Tensor:
        """One input as the model's preprocessed CHW tensor (`transform`: its views, tta.py)."""
        if isinstance(item, torch.Tensor):
            return item if item.ndim == 3 or transform is not None else item.squeeze(0)
        transform = transform or self.transform
        image = item if isinstance(item, Image.Image) else open_rgb(item, transform.decode_size)
        return transform(image.convert("RGB"))


def warn_if_views_and_threshold(views_transform, threshold: float | None) -> None:
    """The temperature and the threshold were fitted on single views: averaged views are less
    confident, so TTA answers fewer images than the threshold's coverage promises."""
    if views_transform is not None and threshold:
        logger.warning("the confidence threshold was chosen on single views; with test-time augmentation "
                       "the averaged probabilities are less confident, so fewer images are answered")


def predict(run_or_model: str | Path | TrainedModel, images: Iterable[str | Path | Image.Image] | str | Path,
            top_k: int = 1, batch_size: int = 32, *, tta: bool = False, tta_crops: int = 1,
            min_confidence: float | None = None, coverage: float | None = None,
            device: str = "cpu") -> list[dict[str, Any]]:
    """`load(run).predict(...)`: top-k labels of images (multi-label: those at their thresholds;
    single-label: "unknown" below the confidence threshold, see TrainedModel.predict)."""
    trained = run_or_model if isinstance(run_or_model, TrainedModel) else load(run_or_model, device)
    return trained.predict(images, top_k, batch_size, tta=tta, tta_crops=tta_crops, min_confidence=min_confidence,
                           coverage=coverage)


def _batched(items: Iterable, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a run folder's best model with its preprocessing and class names; `hf-hub:USER/NAME`: a
    model `tlearn push` put on the Hugging Face Hub (downloaded once, hub/download.py)."""
    if is_hub_name(run_dir):
        run_dir = download_model(str(run_dir))
        model = load_hub_model(run_dir)
    else:
        model = checkpoint.load_model(run_dir)
    model.to(torch.device(device))
    return TrainedModel(model, model.info.preprocessing, list(model.info.class_names), Path(run_dir))


