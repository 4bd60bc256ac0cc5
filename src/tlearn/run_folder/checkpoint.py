"""The run folder's model and training state, in and out. No pickles: safetensors + JSON.

One file commits an epoch: `train_state.safetensors` holds the epoch's weights, the
optimiser, scheduler, grad scaler and RNG states and the progress (in its metadata), and
is written atomically (files.py). Whatever else the run folder shows is derived from it
and written after it: `last.safetensors`, `model.safetensors` (the best epoch) and
metrics.csv. A kill between two files therefore leaves a committed state that is whole,
and derived files that are at most one epoch behind it; resume rewrites them from the
state (`repair_derived_files`). Each weights file is tagged with its epoch.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import RunFolderError
from ..files import atomic_save_tensors, read_json, write_json
from ..models import Classifier, ModelInfo, create_model

MODEL_FILE = "model.safetensors"  # best weights (val top-1; balanced accuracy when balancing): eval/predict/export
LAST_FILE = "last.safetensors"  # weights after the last committed epoch
MODEL_JSON = "model.json"
STATE_FILE = "train_state.safetensors"  # the commit point of every epoch: what resume uses
STATE_FORMAT = "tlearn-train-state-2"
_MODEL_PREFIX = "model/"

logger = logging.getLogger(__name__)


def save_model(run_dir: str | Path, model: Classifier | dict[str, torch.Tensor], filename: str = MODEL_FILE,
               *, epoch: int | None = None) -> None:
    """Weights as safetensors, tagged with the epoch they come from (resume checks the tag)."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    metadata = {"epoch": str(epoch)} if epoch is not None else None
    atomic_save_tensors(Path(run_dir) / filename, state, metadata)


def weights_epoch(path: Path) -> int | None:
    """The epoch a weights file was written for, or None (absent, untagged or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            tag = (handle.metadata() or {}).get("epoch")
    except (OSError, SafetensorError):
        return None
    return int(tag) if tag is not None and tag.isdigit() else None


def save_model_info(run_dir: str | Path, info: ModelInfo) -> None:
    write_json(Path(run_dir) / MODEL_JSON, info.to_dict())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RunFolderError(f"{path} not found: not a complete tlearn run folder")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise RunFolderError(f"{path} is damaged or not a safetensors file ({str(error)[:120]})") from None


def read_model_info(run_dir: str | Path) -> ModelInfo:
    path = Path(run_dir) / MODEL_JSON
    try:
        return ModelInfo.from_dict(read_json(path))
    except (KeyError, TypeError) as error:
        raise RunFolderError(f"{path} is not a tlearn model description ({error})") from None


def build_model(info: ModelInfo) -> Classifier:
    """The run's architecture with random weights, from its description (no network)."""

    model = create_model(info.name, info.num_classes, "none", build_kwargs=info.build_kwargs,
                         aux_logits=bool(info.build_kwargs.get("aux_logits", False)))
    model.info = info
    return model


def load_weights(model: Classifier, state: dict[str, torch.Tensor], where: Path) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunFolderError(f"{where} does not fit {model.info.name}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_model(run_dir: str | Path, filename: str = MODEL_FILE) -> Classifier:
    """Rebuild the run's architecture from model.json and load its weights (no network)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    model = build_model(read_model_info(run_dir))
    path = run_dir / filename
    if not path.is_file() and has_train_state(run_dir):
        path, weights = run_dir / STATE_FILE, _committed_weights(run_dir, filename)
    else:
        weights = read_tensors(path)
    load_weights(model, weights, path)
    return model.eval()


def _committed_weights(run_dir: Path, filename: str) -> dict[str, torch.Tensor]:
    """`filename`'s weights from the committed state, when the state holds them: a run killed
    between a commit and its derived files has not written them yet. The state holds the last
    committed epoch, which is the best only when the progress says so; any other missing file
    is an error, never another epoch's weights in its place."""
    progress = read_progress(run_dir)
    epoch, best = len(progress["rows"]), progress["best_epoch"]
    wanted = epoch if filename == LAST_FILE else best if filename == MODEL_FILE else None
    if wanted != epoch:
        which = f"its best epoch ({best})" if filename == MODEL_FILE else "those weights"
        raise RunFolderError(f"{run_dir / filename} is missing and train_state.safetensors holds epoch {epoch}, "
                             f"not {which}: the weights are gone; retrain, or resume if the run is unfinished")
    weights, state = load_train_state(run_dir)
    logger.warning(f"{run_dir / filename} is missing: loading epoch {epoch} from {STATE_FILE}, the committed "
                   f"state, which is the run's {'best' if filename == MODEL_FILE else 'last'} epoch")
    return published_weights(weights, (state.get("stage_state") or {}).get("ema"))


# --- the training state: one file, nested dicts/lists of tensors and plain values ---

def save_train_state(run_dir: str | Path, model: Classifier, state: dict[str, Any]) -> None:
    """Commit an epoch: weights, optimiser, scheduler, scaler, RNG and progress in one rename."""
    tensors = {f"{_MODEL_PREFIX}{k}": v for k, v in model.state_dict().items()}
    skeleton = _flatten(state, "state", tensors)
    atomic_save_tensors(Path(run_dir) / STATE_FILE, tensors,
                        {"format": STATE_FORMAT, "state": json.dumps(skeleton)})


def has_train_state(run_dir: str | Path) -> bool:
    return (Path(run_dir) / STATE_FILE).is_file()


def load_train_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model weights, state) of the last committed epoch."""
    path = Path(run_dir) / STATE_FILE
    tensors = read_tensors(path)
    skeleton = _read_skeleton(path)
    weights = {k[len(_MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MODEL_PREFIX)}
    return weights, _unflatten(skeleton, tensors)


def read_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """The committed progress only (header read, no tensors): None before the first commit."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    return _unflatten(_read_skeleton(path), {})["progress"]


def _read_skeleton(path: Path) -> Any:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != STATE_FORMAT:
            raise RunFolderError(f"{path} is not a training state of this version of tlearn")
        return json.loads(metadata["state"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is damaged ({str(error)[:120]})") from None


def repair_derived_files(run_dir: Path, weights: dict[str, torch.Tensor], progress: dict[str, Any]) -> None:
    """Bring last.safetensors and model.safetensors level with the committed state.

    They are written after the commit, so a kill can leave them one epoch behind; never
    ahead. The best model lags only when the committed epoch was the best, and then the
    committed weights are the best weights.
    """
    epoch = len(progress["rows"])
    if weights_epoch(run_dir / LAST_FILE) != epoch:
        save_model(run_dir, weights, LAST_FILE, epoch=epoch)
    best = progress["best_epoch"]
    if best == epoch and weights_epoch(run_dir / MODEL_FILE) != best:
        save_model(run_dir, weights, MODEL_FILE, epoch=best)


def _flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(value.copy())
        return {"__ndarray__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_flatten(k, f"{key}.k{i}", tensors), _flatten(v, f"{key}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in the training state")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `_flatten`; with no tensors given, tensor leaves come back as None."""
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors.get(value["__tensor__"])
        if "__ndarray__" in value:
            found = tensors.get(value["__ndarray__"])
            return None if found is None else found.numpy()
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    return value


def published_weights(weights: dict[str, torch.Tensor], saved: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """The classifier's weights as the run folder shows them: the averaged ones in place of the live
    ones where a stage kept an average (`saved`: `WeightAverage.state_dict()`), else unchanged."""
    if not saved:
        return weights
    return {**weights, **{saved["prefix"] + key: value for key, value in saved["weights"].items()}}
