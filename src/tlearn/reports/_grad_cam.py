"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

The map of a class c is ReLU(sum_k w_k A_k), where A is the activation of the model's last
convolutional stage and w_k the spatial mean of d(logit_c)/dA_k; it is upsampled to the input
size and scaled to [0, 1] per image. A forward hook swaps the activation for a copy that requires
grad, so autograd records only what lies between the target and the logits (the stages before it
run without a graph: less memory and time), and the gradient is taken at that copy alone. No
parameter gradient is computed: the requires_grad flags are switched off for the pass and
restored after.

Vision transformers have no feature map: their patch tokens are reshaped to the patch grid
(class and distillation tokens dropped). For models that read the class token, the last block's
output tokens do not reach the logits at all, so the target is the input of the last block's
attention (its first LayerNorm), which mixes every patch into the class token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Classifier

# torchvision architecture (name prefix) -> the backbone submodule whose output is the last stage.
# VGG and AlexNet end their `features` with a max-pool (1x1 at 64 px); their last ReLU comes before it.
_TORCHVISION_TARGETS = {
    "alexnet": "features.-2", "vgg": "features.-2", "convnext": "features", "densenet": "features",
    "efficientnet": "features", "mobilenet": "features", "googlenet": "inception5b", "inception": "Mixed_7c",
    "maxvit": "blocks.-1", "mnasnet": "layers", "regnet": "trunk_output", "resnet": "layer4",
    "resnext": "layer4", "wide_resnet": "layer4", "shufflenet": "conv5", "squeezenet": "",
    "swin": "features", "vit": "encoder.layers.-1.ln_1",
}


@dataclass
class CamTarget:
    """The module whose output Grad-CAM weighs, and how to read that output as (N, C, H, W)."""

    module: nn.Module
    layout: str  # "NCHW", "NHWC" (Swin) or "tokens" (N, prefix + H*W, C)
    prefix_tokens: int = 0  # class/distillation/register tokens ahead of the patch tokens


def find_target(model: Classifier) -> CamTarget:
    """The last convolutional stage of `model`'s backbone (or its last patch tokens)."""
    backbone, info = model.backbone, model.info
    if info.library == "torchvision":
        arch = info.arch
        key = next((prefix for prefix in sorted(_TORCHVISION_TARGETS, key=len, reverse=True)
                    if arch.startswith(prefix)), None)
        if key is None:
            raise ValueError(f"no Grad-CAM target known for torchvision's {arch}")
        module = _submodule(backbone, _TORCHVISION_TARGETS[key])
        if key == "vit":
            return CamTarget(module, "tokens", prefix_tokens=1)
        return CamTarget(module, "NHWC" if key == "swin" else "NCHW")
    # timm (and the bundled Lite0, a timm model)
    if hasattr(backbone, "num_prefix_tokens") and hasattr(backbone, "blocks"):
        return CamTarget(backbone.blocks[-1].norm1, "tokens", prefix_tokens=int(backbone.num_prefix_tokens))
    feature_info = getattr(backbone, "feature_info", None)
    if not feature_info:
        raise ValueError(f"no Grad-CAM target known for timm's {info.arch}")
    module = backbone.get_submodule(feature_info[-1]["module"])
    return CamTarget(module, str(getattr(backbone, "output_fmt", "NCHW")))


def _submodule(root: nn.Module, path: str) -> nn.Module:
    """get_submodule that also takes negative indices ("blocks.-1")."""
    module = root
    for part in filter(None, path.split(".")):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


def grad_cam(model: Classifier, images: torch.Tensor, classes: torch.Tensor,
             target: CamTarget | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) in [0, 1] of `classes` for normalised `images` (N, 3, H, W).

    The model runs in eval mode (frozen BatchNorm uses its running statistics), in float32, or
    under autocast to `dtype` (bf16: --amp auto's choice); its training mode and requires_grad
    flags are restored afterwards.
    """
    target = target or find_target(model)
    kept: list[torch.Tensor] = []

    def start_graph_here(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        kept.append(output.detach().requires_grad_(True))
        return kept[-1].clone()  # later in-place ops (DenseNet's final ReLU) must not touch the leaf

    handle = target.module.register_forward_hook(start_graph_here)
    was_training = model.training
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    # --deterministic: some CUDA backward kernels (adaptive pooling) have no deterministic version;
    # a picture may differ in the last bits, so warn instead of failing for the pass
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        model.eval()
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        with torch.enable_grad(), torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images.detach().float())
            activation = kept[-1]
            scores = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
            (gradient,) = torch.autograd.grad(scores, activation)
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
        handle.remove()
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
    activation, gradient = (_as_nchw(t.detach(), target) for t in (activation, gradient))
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cams = (weights * activation).sum(dim=1, keepdim=True)
    return _normalise(F.interpolate(cams.float(), size=images.shape[-2:], mode="bilinear", align_corners=False))


def _as_nchw(tensor: torch.Tensor, target: CamTarget) -> torch.Tensor:
    if target.layout == "NHWC":
        return tensor.permute(0, 3, 1, 2)
    if target.layout == "tokens":
        patches = tensor[:, target.prefix_tokens:]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.transpose(1, 2).reshape(len(tensor), -1, side, side)
    if tensor.ndim != 4:
        raise ValueError(f"the Grad-CAM target gives a {tuple(tensor.shape)} tensor, not a feature map")
    return tensor


def _normalise(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then each map scaled to [0, 1]. A map with no positive evidence (possible with random
    weights, or when every region argues against the class) keeps its shape without the ReLU:
    the least negative regions, rather than a blank map."""
    cams = cams[:, 0]
    flat = cams.flatten(1)
    positive = flat.clamp(min=0)
    flat = torch.where((positive.amax(dim=1) > 0).unsqueeze(1), positive, flat)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    span = high - low
    # tiny spans are real maps (random weights give gradients of 1e-10): no epsilon floor, only 0 -> 0
    scaled = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), 0.0)
    return scaled.view_as(cams)
