"""The model tlearn trains: a pretrained backbone (pre-logits features) plus a new head."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from ..data import Preprocessing


@dataclass
class ModelInfo:
    """Everything needed to rebuild the architecture without the original weights."""

    name: str  # as the user wrote it: resnet18, timm:convnext_tiny, efficientnet_lite0
    library: str  # torchvision | timm | bundled
    arch: str
    num_classes: int
    num_features: int
    weights: str  # what the user asked for: default | none | a path
    weights_id: str  # identity of the weights actually loaded (for caches and provenance)
    preprocessing: Preprocessing
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    aux_modules: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    # --balance and the training split's class counts and priors (balance.Balance.to_dict); with
    # logit-adjust the head's bias already holds -tau * log(prior)
    balance: dict[str, Any] = field(default_factory=dict)
    # "single-label" (softmax; model.json of older runs has no key) or "multi-label" (sigmoid: a class
    # is predicted when its probability >= its threshold, chosen on val; multilabel.py)
    task: str = "single-label"
    thresholds: list[float] = field(default_factory=list)
    label_delim: str | None = None  # multi-label: how the labels table joined labels (predict writes them so)
    # Single-label: probabilities are softmax(logits / temperature), T chosen on val at the end of
    # training (calibration_choice.py: a cross-validated fit, or 1.0; model.json of older runs has no
    # key: 1.0). Multi-label runs keep 1.0.
    temperature: float = 1.0
    min_confidence: float | None = None  # train --coverage: below it predict answers "unknown"

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        data = dict(data)
        if "source" in data:  # model.json of runs before the field was renamed
            data["library"] = data.pop("source")
        data["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
        return cls(**data)


class AuxOutput(NamedTuple):
    """Training-time output of Inception v3 / GoogLeNet: main logits plus auxiliary logits."""

    logits: torch.Tensor
    aux: list[torch.Tensor]


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, info: ModelInfo):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.info = info

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-logits features; call in eval mode (what the feature cache stores)."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor | AuxOutput:
        out = self.backbone(images)
        if isinstance(out, tuple):  # Inception/GoogLeNet in train mode: (features, aux...)
            aux = [a for a in out[1:] if a is not None]
            logits = self.head(out[0])
            return AuxOutput(logits, aux) if aux else logits
        return self.head(out)

    def head_modules(self) -> list[nn.Module]:
        """The new layers: the head and any auxiliary heads inside the backbone."""
        return [self.head, *(getattr(self.backbone, name) for name in self.info.aux_modules)]

    def head_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.head_modules():
            yield from module.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head_ids = {id(p) for p in self.head_parameters()}
        for parameter in self.backbone.parameters():
            if id(parameter) not in head_ids:
                yield parameter
