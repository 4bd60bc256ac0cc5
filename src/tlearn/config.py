"""Resolved settings of a run: data, model, training. Frozen dataclasses, validated on construction.

Defaults and their command-line help are written once, where each field is defined
(`option`); cli_flags.py builds the flags from them. So `config.yaml` in a run folder plus
this file explain every number a run used.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

STRATEGIES = ("linear-probe", "finetune", "two-stage", "as-is")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")
AUGMENTS = ("default", "randaugment", "trivialaugment", "autoaugment", "none")  # data/augment.py
HEAD_SOLVERS = ("sgd", "lbfgs")
AMP_DTYPES = ("bf16", "fp16")
AMP_MODES = ("auto", "on", "off")  # --amp alone: on
SMALL_IMAGES = ("auto", "weights")
# What early stopping watches: val_map and val_balanced_acc exist only for some tasks (early_stopping.py).
MONITORS = ("val_loss", "val_top1", "val_map", "val_balanced_acc")
UNFREEZE_MODES = ("all", "gradual")  # fine-tuning: everything at once, or block group by group (layer_groups.py)
BALANCE_MODES = ("none", "reweight", "resample", "logit-adjust")  # see balance.py
BACKBONE_LR_MULT = 0.1  # the default of --backbone-lr-mult; --layer-decay replaces it
BUILTIN_DATASETS = ("digits", "cifar10", "cifar100")  # --data names that are not folders
LR_FIND = "find"  # --lr find: the LR finder picks the last stage's LR (lr_finder.py)


def lr_value(text: str) -> float | str:
    """--lr: a number, or `find`."""
    if text.strip().lower() == LR_FIND:
        return LR_FIND
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or {LR_FIND}, got {text!r}") from None


def option(default: Any, help: str, *, group: str, choices: tuple[str, ...] | None = None,
           flag: str | None = None, dest: str | None = None, cli: bool = True, parse: Any = None,
           const: Any = None) -> Any:
    """A setting with its command-line description beside its default (cli_flags.py reads it). `flag`: the flag
    when not --field-name (a True default: --no-...); `dest`: the argparse name when it differs; `cli=False`: no
    flag; `parse`: the flag's argparse type where the field's is not enough; `const`: the flag alone's value."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "flag": flag,
                                            "dest": dest, "cli": cli, "parse": parse,
                                            "const": const})


@dataclass(frozen=True)
class LabelTable:
    """A labels table and how to read it (--labels, --path-col, --label-col, --label-delim: they travel together)."""

    path: str
    path_col: str | None = None
    label_col: str | None = None
    label_delim: str | None = None  # split each label cell on it: the task is multi-label

    @classmethod
    def of(cls, path: Any = None, path_col: str | None = None, label_col: str | None = None,
           label_delim: str | None = None) -> LabelTable | None:
        """From the four flags; None without a table (and a one-line error for columns without one)."""
        if path is None:
            if path_col or label_col or label_delim is not None:
                raise ConfigError("--path-col, --label-col and --label-delim need --labels FILE")
            return None
        return cls(str(path), path_col, label_col, label_delim)

    @property
    def multi_label(self) -> bool:
        """The one test of the delimiter: a delimited label column is a multi-label task (task.py)."""
        return self.label_delim is not None

    def fields(self) -> dict[str, str | None]:
        """As DataConfig's fields (config.yaml keeps them flat)."""
        return {"labels": self.path, "path_col": self.path_col, "label_col": self.label_col,
                "label_delim": self.label_delim}

    def read_as(self, trained: LabelTable) -> LabelTable:
        """This table read in `trained`'s format where this one does not say (eval on a run's data)."""
        return LabelTable(self.path, self.path_col or trained.path_col, self.label_col or trained.label_col,
                          self.label_delim or trained.label_delim)


NO_TABLE = {"labels": None, "path_col": None, "label_col": None, "label_delim": None}


@dataclass(frozen=True)
class DataConfig:
    source: str = option(None, "folder with train/ and val/ (or test/) class folders, one folder of class "
                               "folders, or digits | cifar10 | cifar100", group="data", flag="--data", dest="data")
    labels: str | None = option(None, "a .csv or .tsv table (header row) of image paths, relative to --data, "
                                      "and labels; a split or is_valid column is honoured", group="data")
    path_col: str | None = option(None, "--labels: the path column; default: file, filename, path, image, "
                                        "image_id or id", group="data")
    label_col: str | None = option(None, "--labels: the label column; default: label, labels, class, target, "
                                         "category or tags", group="data")
    # Multi-label (multilabel.py): sigmoid outputs, binary cross-entropy, a threshold per class.
    label_delim: str | None = option(None, "--labels: split each label cell on this delimiter (e.g. ' '): the task "
                                           "becomes multi-label; an empty cell is an image with no labels",
                                     group="data")
    data_dir: str = option("data", "download folder for cifar10/cifar100", group="data")
    val_split: float = option(0.1, "fraction held out for validation when there is no val/ or test/ folder",
                              group="data")
    image_size: int | None = option(None, "input (crop) size; default: the weights'", group="data")
    augment: str = option("default", "fine-tuning augmentation: random-resized-crop + flip (default), that plus "
                                     "torchvision's RandAugment, TrivialAugmentWide or AutoAugment (ImageNet "
                                     "policy), or none", group="data", choices=AUGMENTS)
    probe_augment: str = option("none", "augmentation in frozen-backbone stages (none: features are cached)",
                                group="data", choices=AUGMENTS)
    # Stages that train on images only (mixing.py); a head on cached features ignores these three.
    random_erasing: float = option(0.0, "erase a random rectangle of each training image (noise-filled, after "
                                        "normalisation) with this probability (timm's --reprob)", group="data")
    mixup: float = option(0.0, "mixup alpha: blend batches, lambda ~ Beta(alpha, alpha); 0: off", group="data")
    cutmix: float = option(0.0, "cutmix alpha: paste a box of the batch in reverse order, area ~ Beta(alpha, "
                                "alpha); 0: off; with --mixup, one of the two per batch, 50/50", group="data")
    batch_size: int = option(32, "images per batch", group="data")
    workers: int | None = option(None, "decoding processes; default: min(4, cores) for files, 0 for decoded "
                                       "images and on CPUs of 2 cores or fewer", group="data")
    # See data/image_cache.py: fine-tuning then decodes each image once, not once per epoch.
    image_cache_gb: float | None = option(None, "keep decoded images (uint8, presized, memory-mapped) for "
                                                "fine-tuning when they fit this many GB; 0: off; default: a "
                                                "quarter of the memory, at most 4", group="data")
    strict_images: bool = option(False, "unreadable images are an error instead of skipped with a warning",
                                 group="data")
    # See small_images.py: the weights' resize + center-crop throws away content of thumbnails.
    small_images: str = option("auto", "images smaller than the input: auto resizes them whole (bilinear); "
                                       "weights keeps the weights' resize + center-crop",
                               group="data", choices=SMALL_IMAGES)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def table(self) -> LabelTable | None:
        """The labels table, when labels come from one."""
        return LabelTable.of(self.labels, self.path_col, self.label_col, self.label_delim)

    def with_table(self, table: LabelTable | None, **changes: Any) -> DataConfig:
        return dataclasses.replace(self, **(table.fields() if table is not None else NO_TABLE), **changes)

    def validate(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("--data is required: a folder, digits, cifar10 or cifar100")
        if self.labels is not None and (not isinstance(self.labels, str) or not self.labels):
            raise ConfigError("--labels must be the path of a .csv or .tsv file")
        if self.labels and self.source in BUILTIN_DATASETS:
            raise ConfigError(f"--labels needs --data FOLDER (the images' root), not {self.source}")
        if (self.path_col or self.label_col or self.label_delim is not None) and not self.labels:
            raise ConfigError("--path-col, --label-col and --label-delim need --labels FILE")
        if self.label_delim is not None and (not isinstance(self.label_delim, str) or not self.label_delim):
            raise ConfigError("--label-delim must be one or more characters, e.g. ' ' or ';'")
        if not 0.0 < self.val_split < 1.0:
            raise ConfigError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"--image-size must be at least 16, got {self.image_size}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}")
        if self.image_cache_gb is not None and self.image_cache_gb < 0:
            raise ConfigError(f"--image-cache-gb must be 0 or more, got {self.image_cache_gb}")
        _check_choice("--augment", self.augment, AUGMENTS)
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ConfigError(f"--random-erasing must be a probability in [0, 1], got {self.random_erasing}")
        for flag, alpha in (("--mixup", self.mixup), ("--cutmix", self.cutmix)):
            if not 0.0 <= alpha < float("inf"):
                raise ConfigError(f"{flag} must be an alpha of 0 (off) or more, got {alpha}")
        _check_choice("--probe-augment", self.probe_augment, AUGMENTS)
        _check_choice("--small-images", self.small_images, SMALL_IMAGES)


@dataclass(frozen=True)
class ModelConfig:
    name: str = option("efficientnet_lite0", "torchvision name, timm:NAME, or efficientnet_lite0|1|2 (bundled, "
                                             "offline)", group="model", flag="--model", dest="model")
    weights: str = option("default", "default | none | PATH to a state dict", group="model")
    aux_weight: float = option(0.4, "Inception/GoogLeNet auxiliary loss weight; 0 turns the aux heads off",
                               group="model")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.aux_weight < 0:
            raise ConfigError(f"--aux-weight must be 0 or more, got {self.aux_weight}")


@dataclass(frozen=True)
class TrainConfig:
    strategy: str = option("two-stage", "linear-probe, finetune, two-stage (probe, then everything), or as-is "
                                        "(the model's own trainable flags)", group="strategy", choices=STRATEGIES)
    epochs: int = option(5, "fine-tuning epochs (probe epochs for linear-probe)", group="strategy")
    head_epochs: int = option(3, "linear-probe epochs before fine-tuning in two-stage", group="strategy")
    # The probe then trains on images, not cached features.
    unfreeze_last: int = option(0, "linear-probe / two-stage's probe: also train the last N backbone blocks",
                                group="strategy")
    unfreeze: str = option("all", "fine-tuning: all trains everything from the start; gradual trains the head and "
                                  "the top k block groups in epoch k, then everything", group="strategy",
                           choices=UNFREEZE_MODES)
    bn_train: bool = option(False, "fine-tuning: update BatchNorm running statistics (default: keep the "
                                   "pretrained ones)", group="strategy")
    # Cached-feature head: full-batch L-BFGS logistic regression with an L2 sweep on val
    # (no LR to tune, matches scikit-learn) or mini-batch training with the optimiser below.
    head_solver: str = option("lbfgs", "cached-feature head: lbfgs (full-batch, L2 chosen on val) or sgd "
                                       "(mini-batch, the optimiser's settings)", group="strategy",
                              choices=HEAD_SOLVERS)
    patience: int | None = option(None, "stop a stage after N epochs without improvement of --monitor "
                                        "(an L-BFGS probe is one solve: no patience)", group="strategy")
    min_delta: float = option(0.0, "smallest change of --monitor that counts as an improvement", group="strategy")
    monitor: str = option("val_loss", "what --patience watches", group="strategy", choices=MONITORS)
    # Imbalanced classes (balance.py); the README's "Imbalanced classes" measures each mode.
    balance: str = option("none", "imbalanced classes: reweight the loss, resample class-balanced batches, or "
                                  "logit-adjust the predictions (subtract tau x log prior)", group="strategy",
                          choices=BALANCE_MODES)
    balance_tau: float = option(1.0, "tau of --balance logit-adjust", group="strategy")
    lr: float | str | None = option(None, "head LR (default 1e-3 AdamW, 0.01 SGD), or find: the LR finder picks "
                                          "the last stage's LR (fine-tuning's, in two-stage)", group="optimizer",
                                    parse=lr_value)
    backbone_lr_mult: float = option(BACKBONE_LR_MULT, "backbone LR = head LR x this, when fine-tuning",
                                     group="optimizer")
    # BEiT / timm: depth 0 is the head, 1 the top block group; replaces --backbone-lr-mult.
    layer_decay: float | None = option(None, "layer-wise LR decay: a backbone block group's LR = head LR x this ^ "
                                             "its depth from the top (e.g. 0.75); default off", group="optimizer")
    optimizer: str = option("adamw", "optimiser", group="optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum", group="optimizer")
    weight_decay: float | None = option(None, "default 0.01 AdamW, 1e-4 SGD (none on norms and biases)",
                                        group="optimizer")
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", group="optimizer")
    warmup_epochs: float = option(0.0, "linear warm-up before the cosine decay, per stage", group="optimizer")
    # ema.py: timm's ModelEmaV3 with warm-up; accumulation.py: exact for models without train-mode BatchNorm.
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights (decay D, e.g. "
                                           "0.999, warmed up) in stages that run the optimiser; validation and "
                                           "the saved model use it; an L-BFGS head solve has none",
                                     group="optimizer")
    accumulate: int = option(1, "micro-batches per optimiser step (gradient accumulation): the step sees "
                                "--batch-size x N images", group="optimizer")
    device: str = option("auto", "where to train", group="runtime", choices=DEVICES)
    amp: str = option("auto", "mixed precision: on (CUDA: bf16 where supported, else fp16; CPU: bf16, needs "
                              "bf16 units), off, or auto: each training stage times a few steps in both and "
                              "keeps bf16 only where it is faster; --amp alone is on", group="runtime",
                      choices=AMP_MODES, const="on")
    amp_dtype: str | None = option(None, "default: bf16 if the GPU supports it, else fp16; CPUs: bf16 only",
                                   group="runtime", choices=AMP_DTYPES)
    channels_last: bool = option(True, "channels_last memory format", group="runtime",
                                 flag="--no-channels-last")
    seed: int = option(0, "seed of the split, the head's initialisation and the data order", group="runtime")
    deterministic: bool = option(False, "deterministic algorithms (bit-identical resume on CPU)", group="runtime")
    detect_anomaly: bool = option(False, "debug NaNs: autograd anomaly detection", group="runtime")
    use_cache: bool = option(True, "never use the feature and decoded-image caches", group="output",
                             flag="--no-cache")
    cache_dir: str | None = option(None, "feature and decoded-image caches (default $TLEARN_CACHE or "
                                         "~/.cache/tlearn)", group="output")
    report: bool = option(True, "skip report.html", group="output", flag="--no-report")
    tensorboard: bool = option(False, "write TensorBoard scalars to the run folder", group="output")
    # calibration.py: the threshold is picked on the calibrated validation confidences.
    coverage: float | None = option(None, "answer this fraction of images (e.g. 0.95): store the confidence "
                                          "threshold that answers it on val in model.json; predict answers "
                                          "'unknown' below it (single-label)", group="output")
    track: str | None = option(None, "log params, each epoch's metrics, the summary and the run's files to MLflow "
                                     "(MLFLOW_TRACKING_URI, default RUN/../mlflow.db)", group="output",
                               choices=("mlflow",))
    # Self-training on images without labels (training/pseudo_labels.py; defaults measured in docs/labelling.md).
    pseudo_unlabeled: str | None = option(None, "a folder of unlabelled images: self-train on the surest per class",
                                          group="pseudo", flag="--unlabeled")
    pseudo_rounds: int = option(8, "self-training rounds (fit, pseudo-label, refit)", group="pseudo")
    pseudo_share: float = option(0.8, "the last round's share of each predicted class (round r: x r/R)", group="pseudo")
    pseudo_weight: float = option(0.5, "a pseudo-label's weight in the loss against a label's 1", group="pseudo")

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # a config.yaml written before --amp auto existed
            object.__setattr__(self, "amp", "on" if self.amp else "off")
        self.validate()

    def validate(self) -> None:
        for flag, value, choices in (("--strategy", self.strategy, STRATEGIES), ("--device", self.device, DEVICES),
                                     ("--optimizer", self.optimizer, OPTIMIZERS), ("--balance", self.balance,
                                     BALANCE_MODES), ("--head-solver", self.head_solver, HEAD_SOLVERS)):
            _check_choice(flag, value, choices)
        if self.balance_tau < 0:
            raise ConfigError(f"--balance-tau must be 0 or more, got {self.balance_tau}")
        _check_choice("--amp", self.amp, AMP_MODES)
        if self.amp == "on" and self.device == "mps":
            raise ConfigError("--amp needs CUDA or a CPU with bf16 units, not --device mps")
        if self.amp == "on" and self.amp_dtype == "fp16" and self.device == "cpu":
            raise ConfigError("--amp-dtype fp16 needs a CUDA device; on CPU --amp uses bf16")
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
        _check_choice("--unfreeze", self.unfreeze, UNFREEZE_MODES)
        if self.unfreeze == "gradual" and self.strategy not in ("finetune", "two-stage"):
            raise ConfigError(f"--unfreeze gradual applies to finetune and two-stage, not {self.strategy}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"--layer-decay must be above 0 and at most 1, got {self.layer_decay}")
        if self.layer_decay is not None and self.backbone_lr_mult != BACKBONE_LR_MULT:
            raise ConfigError("--layer-decay replaces --backbone-lr-mult (the top block group gets head LR x "
                              "decay); give one of them")
        _check_choice("--monitor", self.monitor, MONITORS)
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"--patience must be at least 1, got {self.patience}")
        if self.min_delta < 0:
            raise ConfigError(f"--min-delta must be 0 or more, got {self.min_delta}")
        if isinstance(self.lr, str) and self.lr != LR_FIND:
            raise ConfigError(f"--lr must be a number above 0 or {LR_FIND}, got {self.lr!r}")
        if self.lr is not None and self.lr != LR_FIND and self.lr <= 0:
            raise ConfigError(f"--lr must be above 0, got {self.lr}")
        if self.backbone_lr_mult <= 0:
            raise ConfigError(f"--backbone-lr-mult must be above 0, got {self.backbone_lr_mult}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs must be 0 or more, got {self.warmup_epochs}")
        if self.coverage is not None and not 0.0 < self.coverage <= 1.0:
            raise ConfigError(f"--coverage must be above 0 and at most 1, got {self.coverage}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be between 0 and 1 (exclusive), got {self.ema_decay}")
        if self.accumulate < 1:
            raise ConfigError(f"--accumulate must be at least 1, got {self.accumulate}")

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None and self.lr != LR_FIND:  # find: stages before the finder's use the default
            return self.lr
        return 1e-3 if self.optimizer == "adamw" else 0.01

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer == "adamw" else 1e-4


@dataclass(frozen=True)
class DistillConfig:
    """`tlearn distill` (training/distillation.py), after Hinton et al. 2015: the student learns the teacher
    run's softened outputs (KL divergence at a temperature, x T^2) beside the labels."""

    teacher: str = option(None, "the teacher's run folder", group="distill", cli=False)
    temperature: float = option(4.0, "softmax temperature of both models' outputs in the KL term",
                                group="distill", flag="--distill-temperature")
    distill_weight: float = option(0.5, "weight of the KL term (x T^2) in the loss", group="distill")
    label_weight: float = option(0.5, "weight of the loss on the labels (images from --unlabeled have none)",
                                 group="distill")
    unlabeled: str | None = option(None, "a folder of images without labels (searched recursively): the "
                                         "teacher labels them softly", group="distill")

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise ConfigError("distillation needs the teacher's run folder")
        if not self.temperature > 0:
            raise ConfigError(f"--distill-temperature must be above 0, got {self.temperature}")
        if self.distill_weight < 0 or self.label_weight < 0 or self.distill_weight + self.label_weight <= 0:
            raise ConfigError("--distill-weight and --label-weight must be 0 or more, and not both 0")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig | None = None  # a distillation run: the student learns from a teacher run

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        if raw["distill"] is None:  # an ordinary run's config.yaml stays as it was
            del raw["distill"]
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        """Rebuild from `to_dict()` output; unknown keys are an error, missing ones default."""
        try:
            return cls(
                data=DataConfig(**raw["data"]),
                model=ModelConfig(**raw.get("model", {})),
                train=TrainConfig(**raw.get("train", {})),
                distill=DistillConfig(**raw["distill"]) if raw.get("distill") else None,
            )
        except (KeyError, TypeError) as error:
            raise ConfigError(f"config does not match this version of tlearn: {error}") from None


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
