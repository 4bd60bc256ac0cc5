"""The teacher of a distillation run: a finished run folder's best model, frozen, with its identity,
its logits on whole data sets (through the feature cache) and on the student's views, and the
per-image latency both models are compared by.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Preprocessing, Samples
from ..errors import DataError, RunFolderError
from ..features import FeatureExtractor, tensor_digest
from ..models import Classifier
from ..run_folder import checkpoint
from ..runtime import Runtime
from ..task import Task

HEAD_CHUNK = 4096  # feature rows through the teacher's head at a time


def read_teacher_classes(run_dir: str | Path) -> list[str]:
    """The teacher run's class names, from model.json alone (no weights read): a cheap check before
    a distillation run claims its folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"teacher run folder not found: {run_dir}")
    info = checkpoint.read_model_info(run_dir) if (run_dir / checkpoint.MODEL_JSON).is_file() else None
    if info is None or not (run_dir / checkpoint.MODEL_FILE).is_file():
        raise RunFolderError(f"teacher {run_dir} is not a finished tlearn run (no model.json and model.safetensors)")
    if Task.of(info).multi_label:
        raise DataError(f"teacher {run_dir} is a multi-label run; distillation is single-label")
    return list(info.class_names)


def require_same_classes(teacher_classes: list[str], data_classes: list[str], run_dir: str | Path) -> None:
    if list(teacher_classes) == list(data_classes):
        return
    only_teacher = [name for name in teacher_classes if name not in data_classes]
    only_data = [name for name in data_classes if name not in teacher_classes]
    detail = (f"only the teacher has {', '.join(only_teacher[:3])}" if only_teacher else
              f"only the data has {', '.join(only_data[:3])}" if only_data else "the same names in another order")
    raise DataError(f"teacher {run_dir} was trained on other classes than --data ({len(teacher_classes)} vs "
                    f"{len(data_classes)}; {detail}): distil on the teacher's classes")


@dataclass
class Teacher:
    """A finished run's best model, frozen in eval mode on the run's device."""

    model: Classifier
    run_dir: Path
    identity: str  # hash of every weight: the logit cache's key

    @classmethod
    def load(cls, run_dir: str | Path, class_names: list[str], runtime: Runtime) -> Teacher:
        require_same_classes(read_teacher_classes(run_dir), class_names, run_dir)
        model = checkpoint.load_model(run_dir).to(runtime.device).eval()
        if runtime.channels_last:
            model.to(memory_format=torch.channels_last)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        state = model.state_dict()
        identity = tensor_digest(*(part for key in sorted(state) for part in (key, state[key])))
        return cls(model, Path(run_dir), identity)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.info.preprocessing

    def data_logits(self, samples: Samples, extractor: FeatureExtractor, description: str) -> torch.Tensor:
        """Logits of every sample's evaluation view (the teacher's own preprocessing), on the CPU: its
        backbone features from the feature cache, then its head."""
        features = extractor.cached(self.model, samples, description=description)
        head = self.model.head
        device = next(head.parameters()).device
        with torch.inference_mode():
            chunks = [head(chunk.to(device).float()).float().cpu() for chunk in features.split(HEAD_CHUNK)]
        return torch.cat(chunks).clone() if chunks else torch.zeros(0, self.model.info.num_classes)


def teacher_view(inputs: torch.Tensor, student: Preprocessing, teacher: Preprocessing) -> torch.Tensor:
    """The student's normalised view as the teacher's input: its pixels renormalised with the
    teacher's mean and std and resized to the teacher's input size (its interpolation)."""
    views = inputs.float()
    if (student.mean, student.std) != (teacher.mean, teacher.std):
        shape = (1, 3, 1, 1)
        student_mean, student_std, teacher_mean, teacher_std = (
            torch.tensor(values, device=views.device).view(shape)
            for values in (student.mean, student.std, teacher.mean, teacher.std))
        views = (views * student_std + student_mean - teacher_mean) / teacher_std
    size = teacher.crop_size
    if tuple(views.shape[-2:]) != (size, size):
        mode = "bicubic" if teacher.interpolation == "bicubic" else "bilinear"
        views = F.interpolate(views, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return views


def view_mapping(student: Preprocessing, teacher: Preprocessing) -> str:
    """What teacher_view does, as text for the cache key."""
    return f"{student.to_dict()}->{teacher.to_dict()}"


@torch.inference_mode()
def latency_ms(model: nn.Module, image_size: int, device: torch.device, repeats: int = 15) -> float:
    """Median milliseconds of one image through `model` (batch 1, eval mode) after three warm-up
    passes: what a deployment answering one request at a time waits."""
    model = model.eval()
    image = torch.randn(1, 3, image_size, image_size, device=device)
    times = []
    for index in range(3 + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        model(image)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 3:
            times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 3)
