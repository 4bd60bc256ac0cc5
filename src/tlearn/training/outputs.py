"""What a run writes besides each epoch's commit: the run folder at its start, the summary's
figures and what the run's end needs (StagesResult: the api calibrates and reports from it).

Split from runner.py, which runs the stages; `run` is its `runner.Run`.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Samples
from ..features import FeatureExtractor
from ..metrics import imbalance_ratio
from ..models import Classifier
from ..run_folder import checkpoint, run_folder_writes
from ..run_folder import records as run_folder
from ..runtime import Runtime
from ..task import Task
from ._precision import precision_record

if TYPE_CHECKING:
    from .runner import Run

logger = logging.getLogger(__name__)


def start_run_folder(run: Run, model: Classifier) -> None:
    config, runtime, data = run.config, run.runtime, run.data
    resolved = {"lr": config.train.resolved_lr, "weight_decay": config.train.resolved_weight_decay,
                "device": str(runtime.device), "world_size": runtime.world_size,
                "amp_dtype": str(runtime.amp_dtype).replace("torch.", "") if runtime.amp_dtype else None,
                "preprocessing": model.info.preprocessing.to_dict(), "weights_id": model.info.weights_id,
                "data": data.description, "num_train": len(data.train), "num_val": len(data.val),
                "class_names": list(data.class_names), "balance": run.balance.to_dict(),
                "run_dir": str(run.run_dir)}
    with run_folder_writes(run.run_dir, "the run folder", committed=False):
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run_folder.write_config(run.run_dir, config, resolved)
        run_folder.write_skipped(run.run_dir, data.skipped)
        checkpoint.save_model_info(run.run_dir, model.info)


@dataclass
class StagesResult:
    """What training hands back: the summary so far, and what the run's end needs (the calibration
    and the report, which the api writes; the trainer imports neither)."""

    model: Classifier
    summary: dict[str, Any]
    run_dir: Path | None  # None: nothing written (no folder, or not rank 0)
    val: Samples
    val_probs: torch.Tensor | None  # the best model's validation probabilities, when known without a pass
    runtime: Runtime  # one process: the end of a run is rank 0's alone
    batch_size: int
    workers: int | None
    cache_dir: Path | None
    coverage: float | None
    report: bool
    tracker: Any = None  # --track mlflow: the api hands it the summary at the very end (callbacks/tracking.py)


def finish_stages(model: Classifier, run: Run) -> StagesResult:
    """The summary, and the run folder made whole without the calibration: a model even after zero
    epochs, a multi-label run's thresholds."""
    summary = _summary(model, run)
    if run.distiller is not None and run.writes:
        extractor = FeatureExtractor(run.runtime, batch_size=max(run.config.data.batch_size, 64),
                                     workers=run.config.data.workers, cache_dir=run.cache_dir)
        summary["distillation"] = run.distiller.summary(run.data.val, extractor)
    if run.pseudo is not None:
        summary["pseudo_labels"] = run.pseudo.summary
    probs = best_val_probabilities(model, run) if run.writes else None
    if run.writes:
        with run_folder_writes(run.run_dir, "the run summary"):
            if run.progress.best_epoch == 0:  # zero epochs: still leave a loadable model
                checkpoint.save_model(run.run_dir, model, epoch=0)
            if Task.of(model.info).multi_label:  # the best epoch's thresholds (written with it, again after a resume)
                model.info.thresholds = list(run.progress.best_thresholds)
                checkpoint.save_model_info(run.run_dir, model.info)
    tc, dc = run.config.train, run.config.data
    return StagesResult(model, summary, run.run_dir if run.writes else None, run.data.val, probs,
                        run.runtime.alone(), max(dc.batch_size, 64), dc.workers, run.cache_dir, tc.coverage,
                        tc.report, run.tracker)


@torch.inference_mode()
def best_val_probabilities(model: Classifier, run: Run) -> torch.Tensor | None:
    """Validation probabilities of the best model without a pass of its own: kept from the best
    epoch's validation, or, after a resume, from the cached features when its backbone is the one
    those features came from (the best epoch trained on them); else None."""
    if run.best_val_probs is not None:
        return run.best_val_probs
    if run.val_features is None or run.progress.best_epoch not in run.feature_epochs:
        return None
    head = copy.deepcopy(model.head).cpu().float().eval()
    best = checkpoint.read_tensors(run.run_dir / checkpoint.MODEL_FILE)
    head.load_state_dict({k[len("head."):]: v for k, v in best.items() if k.startswith("head.")})
    logits = head(run.val_features.float())
    return Task.of(model.info).probabilities(logits)


def _summary(model: Classifier, run: Run) -> dict[str, Any]:
    progress, data = run.progress, run.data
    if Task.of(model.info).multi_label:
        figures = {"val_map": 0.0, "val_f1_micro": 0.0, "val_f1_macro": 0.0, **progress.best_values,
                   "thresholds": list(progress.best_thresholds)}
    else:
        figures = {"val_top1": max(progress.best_top1, 0.0), "val_top5": progress.best_top5,
                   "val_balanced_acc": progress.best_balanced_acc, "val_f1_macro": progress.best_f1_macro}
    return {
        "model": model.info.name, "weights": model.info.weights_id, "strategy": run.config.train.strategy,
        "task": model.info.task, **figures,
        "balance": run.balance.mode, "train_class_counts": list(run.balance.counts),
        "train_imbalance_ratio": round(imbalance_ratio(run.balance.counts), 2),
        "best_epoch": progress.best_epoch, "train_seconds": round(progress.train_seconds, 2),
        "stages": progress.stage_results, "num_classes": len(data.class_names),
        "class_names": list(data.class_names), "num_train": len(data.train), "num_val": len(data.val),
        "skipped_files": len(data.skipped), "epochs_completed": len(progress.rows),
        "amp": precision_record(run.runtime, run.config.train.amp, progress.precisions),
    }
