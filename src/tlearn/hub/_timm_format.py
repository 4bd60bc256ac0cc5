"""A tlearn classifier's weights in timm's own layout, and back.

tlearn keeps a timm model as `backbone` (its classifier reset to nothing) plus a new Linear
`head`; timm keeps the same layers in one model whose classifier sits at the name its
`pretrained_cfg["classifier"]` gives. The backbone's keys lose their `backbone.` prefix and the
head's become the classifier's: timm then loads the file with `pretrained=True` as it loads its
own, and timm's `save_for_hf` writes config.json (architecture, num_classes, label_names,
pretrained_cfg with this run's preprocessing).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelError
from ..models import ModelInfo

BACKBONE, HEAD = "backbone.", "head."


def require_timm_layout(info: ModelInfo) -> None:
    if info.library not in ("timm", "bundled"):
        raise ModelError(f"the Hub folder is in timm's format; {info.name} is a {info.library} model: push a run "
                         "of a timm: model or efficientnet_lite0/1/2")


def _empty_timm_model(info: ModelInfo) -> torch.nn.Module:
    import timm

    return timm.create_model(info.arch, pretrained=False, num_classes=info.num_classes)


def classifier_name(model: torch.nn.Module) -> str:
    name = model.pretrained_cfg.get("classifier")
    if not name:
        raise ModelError(f"timm's {type(model).__name__} names no classifier in its pretrained_cfg")
    return name if not isinstance(name, (list, tuple)) else name[0]


def to_timm_state(state: dict[str, torch.Tensor], classifier: str) -> dict[str, torch.Tensor]:
    timm_state = {key[len(BACKBONE):]: value for key, value in state.items() if key.startswith(BACKBONE)}
    timm_state.update({f"{classifier}.{key[len(HEAD):]}": value for key, value in state.items()
                       if key.startswith(HEAD)})
    return timm_state


def from_timm_state(timm_state: dict[str, torch.Tensor], classifier: str) -> dict[str, torch.Tensor]:
    prefix = classifier + "."
    return {(HEAD + key[len(prefix):] if key.startswith(prefix) else BACKBONE + key): value
            for key, value in timm_state.items()}


def _data_config(info: ModelInfo) -> dict:
    """This run's preprocessing as timm's data config (what timm.data.create_transform reads)."""
    prep = info.preprocessing
    return {"input_size": (3, prep.crop_size, prep.crop_size), "interpolation": prep.interpolation,
            "mean": tuple(prep.mean), "std": tuple(prep.std), "crop_pct": round(prep.crop_size / prep.resize_size, 6),
            "crop_mode": "center"}


def write_timm_files(folder: Path, info: ModelInfo, state: dict[str, torch.Tensor]) -> None:
    """config.json and model.safetensors, written by timm's own `save_for_hf`."""
    from timm.models import save_for_hf

    require_timm_layout(info)
    model = _empty_timm_model(info)
    model.load_state_dict(to_timm_state(state, classifier_name(model)), strict=True)
    save_for_hf(model, str(folder), model_config={"label_names": list(info.class_names)}, safe_serialization=True,
                data_config=_data_config(info))
