"""Where a run stands, and the one file that commits it after every epoch.

`Progress` is plain values (epochs done, best so far, the metric rows); `TrainState` is the
stage's optimiser, scheduler and grad scaler. `commit_epoch` writes both with the model's
weights and the RNG states as one file (checkpoint.STATE_FILE), then the files derived from
it. `ResumePoint` is what a resumed run reads back.
"""
from __future__ import annotations

import random
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import Classifier
from ..run_folder import checkpoint, published_weights, run_folder_writes
from ..run_folder import records as run_folder
from .callbacks.ema import WeightAverage


@dataclass
class Progress:
    """Where the run stands; saved with every epoch (plain values only)."""

    stage_index: int = 0
    stage_epoch: int = 0  # completed epochs within the stage
    best_top1: float = -1.0
    best_top5: float = 0.0
    best_balanced_acc: float = 0.0
    best_f1_macro: float = 0.0
    best_score: float = -1.0  # what picks the best epoch: top-1, or balanced accuracy when balancing
    best_epoch: int = 0
    train_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    stage_results: list[dict[str, Any]] = field(default_factory=list)
    as_is_trainable: list[str] = field(default_factory=list)  # strategy as-is: the user's flags
    # Early stopping within the current stage (callbacks/early_stopping.py): the best value of the
    # monitored metric and the epochs since it improved.
    monitor_best: float | None = None
    epochs_without_improvement: int = 0
    # Multi-label: the best epoch's val figures (Task.result_fields) and the per-class
    # thresholds chosen on its validation probabilities (stored in model.json at the end).
    best_values: dict[str, float] = field(default_factory=dict)
    best_thresholds: list[float] = field(default_factory=list)
    # --lr find: the finder's LR and rule (lr_finder.Finding.record), so a resumed run reuses it.
    lr_found: dict[str, Any] | None = None
    # --amp auto: each training stage's precision and the rates it was chosen by (_precision.py),
    # by stage index, so a resumed stage keeps its choice.
    precisions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class TrainState:
    """What a stage steps besides the model; saved with every epoch."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: WeightAverage | None = None  # --ema-decay

    def state_dict(self) -> dict[str, Any]:
        saved = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict()}
        return saved if self.ema is None else {**saved, "ema": self.ema.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])


@dataclass
class ResumePoint:
    """The last committed epoch of a run folder."""

    weights: dict[str, torch.Tensor]
    progress: Progress
    stage_state: dict[str, Any] | None  # None when the committed epoch ended its stage
    rng: dict[str, Any]

    @classmethod
    def read(cls, run_dir: Path) -> ResumePoint:
        weights, saved = checkpoint.load_train_state(run_dir)
        return cls(weights, Progress(**saved["progress"]), saved["stage_state"], saved["rng"])

    @property
    def published_weights(self) -> dict[str, torch.Tensor]:
        """The committed epoch's weights as last/model.safetensors hold them (averaged with --ema-decay)."""
        return published_weights(self.weights, (self.stage_state or {}).get("ema"))

    def restore_rng(self) -> None:
        random.setstate(_as_tuple(self.rng["python"]))
        np.random.set_state(self.rng["numpy"])
        torch.set_rng_state(self.rng["torch"])


def commit_epoch(run_dir: Path, model: Classifier, progress: Progress, state: TrainState | None,
                 improved: bool) -> None:
    """The committed state first (one atomic file), then what is derived from it."""
    epoch = len(progress.rows)
    ema = state.ema if state is not None else None
    published = model if ema is None else published_weights(model.state_dict(), ema.state_dict())
    with deferred_interrupt(), run_folder_writes(run_dir, f"the checkpoint of epoch {epoch}"):
        checkpoint.save_train_state(run_dir, model, {
            "progress": vars(progress),
            "stage_state": state.state_dict() if state is not None else None,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        })
        checkpoint.save_model(run_dir, published, checkpoint.LAST_FILE, epoch=epoch)
        if improved:
            checkpoint.save_model(run_dir, published, checkpoint.MODEL_FILE, epoch=epoch)
        run_folder.write_metrics(run_dir, progress.rows)


def repair_run_folder(run_dir: Path, point: ResumePoint) -> None:
    """Derived files level with the committed state again, after a kill between two files."""
    with run_folder_writes(run_dir, "the run folder's derived files"):
        checkpoint.repair_derived_files(run_dir, point.published_weights, vars(point.progress))
        run_folder.write_metrics(run_dir, point.progress.rows)


@contextmanager
def deferred_interrupt():
    """Ctrl-C during a commit takes effect once the commit and its derived files are written,
    so an interrupted run folder is always level with its last committed epoch."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and previous is signal.default_int_handler:
            raise KeyboardInterrupt


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
