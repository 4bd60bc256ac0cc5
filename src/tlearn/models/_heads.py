"""Find the final classification layer of any model, cut it off, and make a new head.

After the cut, the backbone returns pre-logits features; the head maps them to classes.
This is the one contract that freezing, the feature cache and export rely on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

IMAGENET_CLASSES = 1000


@dataclass
class HeadSplit:
    backbone: nn.Module
    head: nn.Module
    num_features: int
    aux_modules: list[str] = field(default_factory=list)  # backbone submodules that are new heads


def original_head_keys(model: nn.Module, library: str, arch: str) -> set[str]:
    """State-dict keys of the layers that will be replaced: a weights file may lack them."""
    if library != "torchvision":
        classifier = model.pretrained_cfg.get("classifier", "classifier")
        names = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
        return {k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)}
    if arch.startswith("squeezenet"):
        prefixes = ["classifier.1"]
    else:
        prefixes = [_last_classifier_layer(model)[0], "AuxLogits.fc", "aux1.fc2", "aux2.fc2"]
    return {k for k in model.state_dict() if any(k.startswith(p + ".") for p in prefixes)}


def split_torchvision(model: nn.Module, arch: str, num_classes: int) -> HeadSplit:
    if arch.startswith("squeezenet"):
        return _split_squeezenet(model, num_classes)
    path, layer = _last_classifier_layer(model)
    _set_submodule(model, path, nn.Identity())
    aux_modules = _replace_aux_heads(model, num_classes)
    return HeadSplit(model, nn.Linear(layer.in_features, num_classes), layer.in_features, aux_modules)


def split_timm(model: nn.Module, num_classes: int) -> HeadSplit:
    """timm's contract: `reset_classifier(0)` leaves a model whose forward is pre-logits."""
    num_features = getattr(model, "head_hidden_size", None) or model.num_features
    model.reset_classifier(0)
    return HeadSplit(model, nn.Linear(num_features, num_classes), num_features)


def _split_squeezenet(model: nn.Module, num_classes: int) -> HeadSplit:
    # SqueezeNet classifies with a 1x1 conv over the feature map, then averages. The new head
    # keeps that shape (dropout, 1x1 conv, pool) minus the ReLU on logits, which would
    # forbid negative logits for no benefit.
    old = model.classifier[1]
    head = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(old.in_channels, num_classes, kernel_size=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return HeadSplit(model.features, head, old.in_channels)


def _last_classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last Linear producing the 1000 ImageNet logits (auxiliary heads come earlier)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES:
            found = (name, module)
    if found is None:
        raise ValueError(f"no final {IMAGENET_CLASSES}-way Linear layer in {type(model).__name__}")
    return found


def _replace_aux_heads(model: nn.Module, num_classes: int) -> list[str]:
    """Inception v3 and GoogLeNet carry auxiliary classifiers; give them N outputs too."""
    replaced = []
    for aux_name, fc_name in (("AuxLogits", "fc"), ("aux1", "fc2"), ("aux2", "fc2")):
        aux = getattr(model, aux_name, None)
        if aux is None:
            continue
        old = getattr(aux, fc_name)
        setattr(aux, fc_name, nn.Linear(old.in_features, num_classes))
        replaced.append(aux_name)
    return replaced


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if attr.isdigit() and isinstance(parent, nn.Sequential):
        parent[int(attr)] = module
    else:
        setattr(parent, attr, module)
