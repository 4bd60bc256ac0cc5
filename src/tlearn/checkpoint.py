"""The run folder's model and training state, in and out. No pickles: safetensors + JSON.

Every file is written to a temporary name, flushed, fsync'ed and renamed, so a kill at
any moment leaves either the previous complete file or the new one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import RunFolderError
from .models.classifier import Classifier, ModelInfo

MODEL_FILE = "model.safetensors"  # best weights by val top-1: what eval/predict/export use
LAST_FILE = "last.safetensors"  # weights after the last completed epoch: what resume uses
MODEL_JSON = "model.json"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def atomic_write(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # clone: safetensors refuses tensors that share storage (views, tied weights)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, tmp, metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_model(run_dir: str | Path, model: Classifier, filename: str = MODEL_FILE) -> None:
    atomic_save_tensors(Path(run_dir) / filename, model.state_dict())


def save_model_info(run_dir: str | Path, info: ModelInfo) -> None:
    write_json(Path(run_dir) / MODEL_JSON, info.to_dict())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} not found: not a complete tlearn run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path} is damaged ({error})") from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise RunFolderError(f"{path} not found: not a complete tlearn run folder")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise RunFolderError(f"{path} is damaged or not a safetensors file ({str(error)[:120]})") from None


def load_model(run_dir: str | Path, filename: str = MODEL_FILE) -> Classifier:
    """Rebuild the run's architecture from model.json and load its weights (no network)."""
    from .models.factory import create_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    try:
        info = ModelInfo.from_dict(read_json(run_dir / MODEL_JSON))
    except (KeyError, TypeError) as error:
        raise RunFolderError(f"{run_dir / MODEL_JSON} is not a tlearn model description ({error})") from None
    model = create_model(info.name, info.num_classes, "none", build_kwargs=info.build_kwargs,
                         aux_logits=bool(info.build_kwargs.get("aux_logits", False)))
    state = read_tensors(run_dir / filename)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunFolderError(f"{run_dir / filename} does not fit {info.name}: "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.info = info
    return model.eval()


# --- training state: nested dicts/lists of tensors and plain values, as tensors + JSON ---

def save_train_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Optimizer, scheduler, scaler, RNG states and progress, without pickle."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    run_dir = Path(run_dir)
    atomic_save_tensors(run_dir / STATE_TENSORS, tensors)
    write_json(run_dir / STATE_JSON, skeleton)  # written last: it marks the state complete


def load_train_state(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    skeleton = read_json(run_dir / STATE_JSON)
    tensors = read_tensors(run_dir / STATE_TENSORS)
    return _unflatten(skeleton, tensors)


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
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in value["__dict__"]}
    return value
