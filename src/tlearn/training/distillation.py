"""Knowledge distillation (Hinton, Vinyals and Dean 2015): the student learns the teacher's
softened outputs beside the labels.

    loss = label_weight x (the run's own loss on the labels)
         + distill_weight x T^2 x KL(softmax(teacher / T) || softmax(student / T))

The student trains through the run's own stages and techniques; distillation is one callback on
the loop's events (`TeacherTargets`: the teacher's logits of each batch, at before_batch, after
mixing, so the teacher sees the very images the student sees) and the loss above
(`DistillationLoss`, reading them). Where the teacher's logits come from:

- a stage on cached features (the probe): each image's logits on the teacher's own evaluation view,
  from the feature cache and the teacher's head, packed beside the label in the stage's targets;
- a stage on images: the student's view (augmented, mixed), renormalised and resized to the
  teacher's input (_teacher.teacher_view), its logits cached under the view's hash
  (features/logit_cache.py): a resumed run redraws the same views and never runs the teacher again.

Images from --unlabeled carry no label (data.NO_LABEL): only the KL term learns from them, and the
training accuracy counts the teacher's top class for them.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LR_FIND, DistillConfig, RunConfig
from ..data import NO_LABEL, DatasetSplits, FileSamples, Samples, scan_unlabeled
from ..errors import ConfigError
from ..features import FeatureExtractor, LogitCache, tensor_digest
from ..models import Classifier
from ..runtime import Runtime
from ..task import Task
from ._events import Callback
from ._teacher import Teacher, latency_ms, read_teacher_classes, require_same_classes, teacher_view, view_mapping

if TYPE_CHECKING:
    from ._loop import Loop

logger = logging.getLogger(__name__)


def check_distill_config(config: RunConfig) -> None:
    """What distillation cannot do, refused in one line before anything trains."""
    tc, dc = config.train, config.data
    if Task.of(config).multi_label:
        raise ConfigError("distillation is single-label: a labels table with --label-delim is multi-label")
    if tc.lr == LR_FIND:
        raise ConfigError("--lr find sweeps the loss on the labels alone; give distillation a number for --lr")
    if tc.head_solver == "lbfgs" and _has_probe(config):
        raise ConfigError("--head-solver lbfgs fits the labels alone; distillation trains the head on the loop: "
                          "--head-solver sgd")
    if config.distill.unlabeled and (dc.mixup > 0 or dc.cutmix > 0):
        raise ConfigError("--unlabeled with --mixup or --cutmix: a mixed pair with an unlabeled image has no label "
                          "to mix; drop one of them")
    if config.distill.unlabeled and tc.balance == "resample":
        raise ConfigError("--unlabeled with --balance resample: unlabeled images have no class to balance")


def check_distillation(config: RunConfig, class_names: list[str]) -> None:
    """A distillation run's cheap checks, before its folder is claimed: the settings, and a teacher
    run trained on the data's classes (its model.json alone is read)."""
    check_distill_config(config)
    teacher = config.distill.teacher
    require_same_classes(read_teacher_classes(teacher), list(class_names), teacher)


def _has_probe(config: RunConfig) -> bool:
    tc = config.train
    return tc.strategy == "linear-probe" or (tc.strategy == "two-stage" and tc.head_epochs > 0)


class Distiller:
    """A run's teacher, its settings and its logit cache; makes each stage's callback and loss."""

    def __init__(self, teacher: Teacher, settings: DistillConfig, student: Classifier, runtime: Runtime,
                 cache_dir: Path | None, num_unlabeled: int = 0) -> None:
        self.teacher, self.settings, self.student, self.runtime = teacher, settings, student, runtime
        self.cache = LogitCache(cache_dir)
        self.num_unlabeled = num_unlabeled

    def callback(self, cached: bool) -> TeacherTargets:
        return TeacherTargets(self, cached)

    def loss(self, label_loss: nn.Module, source: TeacherTargets) -> DistillationLoss:
        return DistillationLoss(label_loss, source, self.settings)

    def packed_targets(self, samples: Samples, extractor: FeatureExtractor) -> torch.Tensor:
        """A stage on cached features: each row is the label, then the teacher's logits of the image."""
        logits = self.teacher.data_logits(samples, extractor, "teacher train features")
        labels = torch.tensor(samples.labels, dtype=torch.float32).unsqueeze(1)
        return torch.cat([labels, logits], dim=1)

    def view_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of the student's views, from the cache when it saw them before."""
        mapping = view_mapping(self.student.info.preprocessing, self.teacher.preprocessing)
        key = tensor_digest(self.teacher.identity, mapping, str(self.runtime.amp_dtype), inputs)
        logits = self.cache.get(key, len(inputs))
        if logits is None:
            views = teacher_view(inputs, self.student.info.preprocessing, self.teacher.preprocessing)
            with torch.inference_mode(), self.runtime.autocast():
                logits = self.teacher.model(views).float()
            self.cache.put(key, logits)
        return logits.to(inputs.device).clone()

    def summary(self, val: Samples, extractor: FeatureExtractor) -> dict:
        """The summary's "distillation" entry: the teacher, its accuracy on this run's validation split,
        and both models' per-image latency on this run's device."""
        logits = self.teacher.data_logits(val, extractor, "teacher val features")
        labels = torch.tensor(val.labels)
        top1 = float((logits.argmax(1) == labels).float().mean()) if len(labels) else 0.0
        device = self.runtime.device
        teacher_ms = latency_ms(self.teacher.model, self.teacher.preprocessing.crop_size, device)
        student_ms = latency_ms(self.student, self.student.info.preprocessing.crop_size, device)
        info = self.teacher.model.info
        logger.info(f"teacher {info.name}: val top-1 {top1:.4f}, {teacher_ms:.2f} ms per image; student "
                    f"{self.student.info.name}: {student_ms:.2f} ms per image ({teacher_ms / student_ms:.2f}x faster); "
                    f"teacher logits: {self.cache.hits} cached batches, {self.cache.misses} computed")
        return {"teacher_run": str(self.teacher.run_dir), "teacher_model": info.name,
                "teacher_weights": info.weights_id, "teacher_input_size": self.teacher.preprocessing.crop_size,
                "teacher_val_top1": top1, "student_input_size": self.student.info.preprocessing.crop_size,
                "teacher_latency_ms": teacher_ms, "student_latency_ms": student_ms,
                "speedup": round(teacher_ms / student_ms, 3), "latency_device": str(device),
                "temperature": self.settings.temperature, "distill_weight": self.settings.distill_weight,
                "label_weight": self.settings.label_weight, "num_unlabeled": self.num_unlabeled}


def start_distillation(config: RunConfig, data: DatasetSplits, student: Classifier, runtime: Runtime,
                       cache_dir: Path | None) -> tuple[Distiller, DatasetSplits]:
    """The run's Distiller (the teacher loaded and checked against the data's classes), and the data
    with the --unlabeled images appended to the training split."""
    check_distill_config(config)
    teacher = Teacher.load(config.distill.teacher, list(data.class_names), runtime)
    data, count = with_unlabeled(data, config)
    logger.info(f"distilling from {teacher.run_dir} ({teacher.model.info.name}, "
                f"{teacher.preprocessing.crop_size} px), T = {config.distill.temperature:g}, KL weight "
                f"{config.distill.distill_weight:g}, label weight {config.distill.label_weight:g}"
                + (f", {count} unlabeled images" if count else ""))
    return Distiller(teacher, config.distill, student, runtime, cache_dir, count), data


def with_unlabeled(data: DatasetSplits, config: RunConfig) -> tuple[DatasetSplits, int]:
    folder = config.distill.unlabeled
    if not folder:
        return data, 0
    if not isinstance(data.train, FileSamples):
        raise ConfigError("--unlabeled needs --data FOLDER (image files), not a built-in data set")
    unlabeled, skipped = scan_unlabeled(folder, config.data.strict_images)
    train = FileSamples(data.train.paths + unlabeled.paths, data.train.labels + unlabeled.labels)
    return dataclasses.replace(data, train=train, skipped=data.skipped + skipped), len(unlabeled)


class TeacherTargets(Callback):
    """Each training batch's teacher logits (`teacher_logits`), and its labels as the loop expects
    them; images without a label count the teacher's top class in the training figure."""

    def __init__(self, distiller: Distiller, cached: bool) -> None:
        self.distiller, self.cached = distiller, cached
        self.teacher_logits: torch.Tensor | None = None

    def before_batch(self, loop: Loop) -> None:
        if self.cached:  # packed by Distiller.packed_targets: the label, then the teacher's logits
            packed = loop.targets
            self.teacher_logits = packed[:, 1:].float()
            loop.targets = loop.counted = packed[:, 0].round().long()
        else:
            self.teacher_logits = self.distiller.view_logits(loop.inputs)
        labels = loop.targets
        if labels.ndim == 1 and bool((labels == NO_LABEL).any()):
            loop.counted = torch.where(labels == NO_LABEL, self.teacher_logits.argmax(dim=1), labels)


class DistillationLoss(nn.Module):
    """label_weight x the run's label loss (on the images that have a label) + distill_weight x T^2 x
    KL(teacher || student) at temperature T, the teacher's logits from `source` (this batch's)."""

    def __init__(self, label_loss: nn.Module, source: TeacherTargets, settings: DistillConfig) -> None:
        super().__init__()
        self.label_loss, self.source = label_loss, source
        self.temperature = settings.temperature
        self.distill_weight, self.label_weight = settings.distill_weight, settings.label_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        temperature = self.temperature
        teacher = self.source.teacher_logits.to(logits.device)
        divergence = F.kl_div(F.log_softmax(logits.float() / temperature, dim=1),
                              F.log_softmax(teacher.float() / temperature, dim=1),
                              reduction="batchmean", log_target=True) * temperature ** 2
        if targets.ndim == 1:
            labelled = targets != NO_LABEL
            label = (self.label_loss(logits[labelled], targets[labelled]) if bool(labelled.any())
                     else logits.sum() * 0.0)
        else:  # mixed soft targets (no unlabeled images: check_distill_config)
            label = self.label_loss(logits, targets)
        return self.label_weight * label + self.distill_weight * divergence
