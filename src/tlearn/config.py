"""Resolved settings of a run: data, model, training. Frozen dataclasses, validated once.

Defaults are documented where they are defined, so `config.yaml` in a run folder plus
this file explain every number a run used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

STRATEGIES = ("linear-probe", "finetune", "two-stage", "as-is")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
AUGMENTS = ("default", "none")
HEAD_SOLVERS = ("sgd", "lbfgs")
AMP_DTYPES = ("bf16", "fp16")
SMALL_IMAGES = ("auto", "weights")


@dataclass(frozen=True)
class DataConfig:
    source: str  # a folder, or one of: digits, cifar10, cifar100
    data_dir: str = "data"  # where torchvision datasets are downloaded to
    val_split: float = 0.1  # fraction carved out of train when no val/ or test/ exists
    image_size: int | None = None  # None: the size the weights were trained at
    augment: str = "default"  # fine-tuning stages: random-resized-crop + flip
    probe_augment: str = "none"  # frozen-backbone stages: none lets features be cached
    batch_size: int = 32
    workers: int | None = None  # None: min(4, cores) for image files, 0 in memory
    strict_images: bool = False  # unreadable images: error instead of skip + warning
    # Images smaller than the input: auto resizes them whole (bilinear) instead of the weights'
    # resize + center-crop; weights keeps the weights' recipe. See small_images.py.
    small_images: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 < self.val_split < 1.0:
            raise ConfigError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"--image-size must be at least 16, got {self.image_size}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        _check_choice("--augment", self.augment, AUGMENTS)
        _check_choice("--probe-augment", self.probe_augment, AUGMENTS)
        _check_choice("--small-images", self.small_images, SMALL_IMAGES)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "efficientnet_lite0"  # torchvision name, timm:NAME, or efficientnet_lite0
    weights: str = "default"  # default | none | path to a state dict
    aux_weight: float = 0.4  # Inception/GoogLeNet auxiliary loss weight; 0 turns it off

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.aux_weight < 0:
            raise ConfigError(f"--aux-weight must be 0 or more, got {self.aux_weight}")


@dataclass(frozen=True)
class TrainConfig:
    strategy: str = "two-stage"
    epochs: int = 5  # fine-tuning epochs (two-stage, finetune) or probe epochs (linear-probe)
    head_epochs: int = 3  # linear-probe epochs before fine-tuning in two-stage
    # linear-probe / two-stage's probe: also train the last N top-level backbone blocks
    # (the probe then trains on images, not cached features). as-is: the model's own flags.
    unfreeze_last: int = 0
    lr: float | None = None  # head LR; None: 1e-3 for AdamW, 0.01 for SGD
    backbone_lr_mult: float = 0.1  # backbone LR = head LR x this, when fine-tuning
    optimizer: str = "adamw"
    momentum: float = 0.9  # SGD only
    weight_decay: float | None = None  # None: 0.01 for AdamW, 1e-4 for SGD
    label_smoothing: float = 0.0
    bn_train: bool = False  # fine-tuning: update BatchNorm running statistics (default: keep them)
    warmup_epochs: float = 0.0  # linear warm-up before the cosine decay, per stage
    # Cached-feature head: full-batch L-BFGS logistic regression with an L2 sweep on val
    # (no LR to tune, matches scikit-learn) or mini-batch training with the optimiser above.
    head_solver: str = "lbfgs"
    device: str = "auto"
    amp: bool = False  # CUDA only: bf16 where supported, else fp16 with a grad scaler
    amp_dtype: str | None = None  # None: bf16 if the GPU supports it, else fp16
    channels_last: bool = True
    seed: int = 0
    deterministic: bool = False
    use_cache: bool = True  # feature cache for frozen, non-augmented stages
    cache_dir: str | None = None  # None: $TLEARN_CACHE or ~/.cache/tlearn
    detect_anomaly: bool = False
    report: bool = True  # write report.html (curves, confusion, mistakes) at the end
    tensorboard: bool = False  # per-epoch scalars for `tensorboard --logdir RUN`

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_choice("--strategy", self.strategy, STRATEGIES)
        _check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("--device", self.device, DEVICES)
        _check_choice("--head-solver", self.head_solver, HEAD_SOLVERS)
        if self.amp and self.device in ("cpu", "mps"):
            raise ConfigError(f"--amp needs a CUDA device, not --device {self.device}")
        if self.amp_dtype is not None:
            _check_choice("--amp-dtype", self.amp_dtype, AMP_DTYPES)
        if self.epochs < 0 or self.head_epochs < 0:
            raise ConfigError("--epochs and --head-epochs must be 0 or more")
        if self.strategy != "two-stage" and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 for {self.strategy}, got {self.epochs}")
        if self.strategy == "two-stage" and self.epochs + self.head_epochs < 1:
            raise ConfigError("two-stage needs --head-epochs or --epochs above 0")
        if self.unfreeze_last < 0:
            raise ConfigError(f"--unfreeze-last must be 0 or more, got {self.unfreeze_last}")
        if self.unfreeze_last and self.strategy not in ("linear-probe", "two-stage"):
            raise ConfigError(f"--unfreeze-last applies to linear-probe and two-stage, not {self.strategy}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"--lr must be above 0, got {self.lr}")
        if self.backbone_lr_mult <= 0:
            raise ConfigError(f"--backbone-lr-mult must be above 0, got {self.backbone_lr_mult}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}")

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.optimizer == "adamw" else 0.01

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 1e-4


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "RunConfig":
        """Each part validated itself when it was made; kept so callers can chain it."""
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        """Rebuild from `to_dict()` output; unknown keys are an error, missing ones default."""
        try:
            return cls(
                data=DataConfig(**raw["data"]),
                model=ModelConfig(**raw.get("model", {})),
                train=TrainConfig(**raw.get("train", {})),
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"config does not match this version of tlearn: {error}") from None


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
