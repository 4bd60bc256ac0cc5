"""What a run learns: one class per image, or any number of them. The one place that knows the
difference between the two tasks; everything else asks its `Task`.

|                    | single-label                              | multi-label (`--label-delim`)          |
| ------------------ | ----------------------------------------- | -------------------------------------- |
| activation         | softmax(logits / T), T the temperature    | sigmoid, a threshold per class         |
| loss               | cross-entropy (label smoothing, balance)  | binary cross-entropy                   |
| validation figures | top-1/5, balanced accuracy, macro-F1      | mAP, micro-/macro-F1 at the thresholds |
| best epoch         | top-1 (balanced accuracy when balancing)  | mAP                                    |
| early stopping     | val_loss, val_top1, val_balanced_acc      | val_loss, val_map                      |
| prediction columns | path, label, prob (and the top-k)         | path, labels, prob_<class> each        |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import DataConfig, RunConfig
from .errors import ConfigError
from .metrics import ClassificationMeter, EvalResult, MultiLabelMeter, MultiLabelResult, TrainMeter

SINGLE_LABEL, MULTI_LABEL = "single-label", "multi-label"
LOWER_IS_BETTER = frozenset({"val_loss"})


@dataclass(frozen=True)
class Task:
    name: str  # SINGLE_LABEL or MULTI_LABEL, as model.json's `task` says

    @classmethod
    def of(cls, source: RunConfig | DataConfig | Any) -> Task:
        """The task of a run's settings (its labels table) or of a trained model (`ModelInfo.task`)."""
        if isinstance(source, RunConfig):
            source = source.data
        if isinstance(source, DataConfig):
            table = source.table
            return cls(MULTI_LABEL if table is not None and table.multi_label else SINGLE_LABEL)
        return cls(getattr(source, "task", None) or SINGLE_LABEL)  # model.json without `task`: single-label

    @property
    def multi_label(self) -> bool:
        return self.name == MULTI_LABEL

    @property
    def min_classes(self) -> int:
        return 1 if self.multi_label else 2  # one tag is a task too: present or not

    @property
    def monitors(self) -> tuple[str, ...]:
        return ("val_loss", "val_map") if self.multi_label else ("val_loss", "val_top1", "val_balanced_acc")

    # --- activation and loss ---

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Sigmoid per class, or softmax(logits / T): what the logits mean as probabilities."""
        if self.multi_label:
            return logits.sigmoid()
        out = (logits / temperature).softmax(dim=1)
        return out.float() if out.dtype == torch.float64 else out

    def eval_loss(self, label_smoothing: float = 0.0) -> nn.Module:
        """Validation's loss: the training loss without balancing or mixing (comparable across modes)."""
        return nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    # --- figures ---

    def eval_meter(self, num_classes: int, keep_probs: bool = False):
        """Multi-label always keeps the probabilities: mAP needs them."""
        return MultiLabelMeter(num_classes) if self.multi_label else ClassificationMeter(num_classes, keep_probs)

    def train_meter(self, num_classes: int):
        return TrainMeter(num_classes) if self.multi_label else ClassificationMeter(num_classes)

    def result_fields(self, result: EvalResult | MultiLabelResult) -> dict[str, float]:
        """The val_* figures of metrics.csv rows, stage results and summary.json."""
        if self.multi_label:
            return {"val_map": result.map, "val_f1_micro": result.f1_micro, "val_f1_macro": result.f1_macro}
        return {"val_top1": result.top1, "val_top5": result.top5, "val_balanced_acc": result.balanced_acc,
                "val_f1_macro": result.f1_macro}

    def train_fields(self, loss: float, figure: float) -> dict[str, Any]:
        """train_loss and the training figure: top-1, or micro F1 at 0.5 for multi-label data."""
        return {"train_loss": loss, "train_f1_micro" if self.multi_label else "train_top1": figure}

    def describe(self, result: EvalResult | MultiLabelResult) -> str:
        if self.multi_label:
            return (f"mAP {result.map:.4f} micro-F1 {result.f1_micro:.4f} macro-F1 {result.f1_macro:.4f} "
                    f"(thresholds chosen on val; micro-F1 at 0.5 {result.f1_micro_at_half:.4f})")
        return (f"top1 {result.top1:.4f} top5 {result.top5:.4f} balanced {result.balanced_acc:.4f} "
                f"macro-F1 {result.f1_macro:.4f}")

    @property
    def train_figure_name(self) -> str:
        return "micro-F1" if self.multi_label else "acc"

    def selection_score(self, result: EvalResult | MultiLabelResult, balancing: bool) -> float:
        """What the best epoch maximises: mAP (multi-label), balanced accuracy when balancing, else top-1."""
        if self.multi_label:
            return result.map
        return result.balanced_acc if balancing else result.top1

    # --- predictions ---

    def prediction_columns(self, top_k: int, class_names: list[str]) -> list[str]:
        """The CSV header of `tlearn predict --output`: the top-k labels and probabilities, or the
        labels above their thresholds and every class's probability."""
        if self.multi_label:
            return ["path", "labels", *(f"prob_{name}" for name in class_names)]
        header = ["path", "label", "prob"]
        for k in range(2, top_k + 1):
            header += [f"label_{k}", f"prob_{k}"]
        return header

    # --- early stopping ---

    def require_monitor(self, monitor: str) -> None:
        """A one-line error, before training, when this task has no such metric."""
        if monitor in self.monitors:
            return
        if self.multi_label:
            raise ConfigError(f"--monitor {monitor} is for single-label data; multi-label runs can monitor "
                              f"{', '.join(self.monitors)}")
        raise ConfigError(f"--monitor {monitor} needs multi-label data; single-label runs can monitor "
                          f"{', '.join(self.monitors)}")

    def monitor_value(self, result: EvalResult | MultiLabelResult, monitor: str) -> float:
        self.require_monitor(monitor)
        if monitor == "val_loss":
            return result.loss
        return {"val_map": lambda: result.map, "val_top1": lambda: result.top1,
                "val_balanced_acc": lambda: result.balanced_accuracy}[monitor]()

    # --- settings ---

    def check_config(self, config: RunConfig) -> None:
        """One line, before training, for the settings multi-label training does not have."""
        if not self.multi_label:
            return
        tc = config.train
        if tc.balance != "none":
            raise ConfigError(f"--balance {tc.balance} is for single-label data; multi-label runs train with "
                              "--balance none")
        if tc.label_smoothing:
            raise ConfigError("--label-smoothing is for single-label data (cross-entropy), not multi-label")
        if tc.coverage is not None:  # a multi-label run answers per class at its thresholds
            raise ConfigError("--coverage is for single-label data; multi-label runs use per-class thresholds")


SINGLE_LABEL_TASK = Task(SINGLE_LABEL)  # the default where a task is not given (frozen: safe to share)
