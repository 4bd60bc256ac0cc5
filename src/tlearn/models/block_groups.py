"""A backbone's block groups: its parameters in consecutive blocks, from input to output.

Gradual unfreezing (ULMFiT, fastai's `freeze_to`) and layer-wise LR decay (BEiT, timm's
`--layer-decay`) both see the backbone as an ordered list of blocks. timm models name their
own (`group_matcher(coarse=True)`, read by timm's `group_parameters`); torchvision models get a
small rule per family below (stages, or conv blocks between max-pools); anything else falls
back to its top-level children that hold parameters. Every backbone parameter is in exactly
one group; the head and the auxiliary heads are in none. Parameters a rule does not name (a
final norm, a pre-logits layer left by the cut) join the top group.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .classifier import Classifier
from .factory import create_model

Parts = list[tuple[str, list[str]]]  # (group name, module paths inside the backbone), input to output


@dataclass(frozen=True)
class BlockGroup:
    name: str
    parameter_names: tuple[str, ...]  # as in `Classifier.named_parameters()`: "backbone.layer1.0.conv1.weight"
    num_parameters: int  # elements, not tensors


def block_groups(model: Classifier) -> list[BlockGroup]:
    """The backbone's block groups, input first; at least one."""
    backbone_ids = {id(p) for p in model.backbone_parameters()}
    named = [(name, p) for name, p in model.backbone.named_parameters() if id(p) in backbone_ids]
    if hasattr(model.backbone, "group_matcher"):  # timm, the bundled Lite0 included
        names = _timm_groups(model.backbone, [name for name, _ in named])
    else:
        names = _assign([name for name, _ in named], _torchvision_parts(model.backbone, model.info.arch))
    sizes = dict((name, p.numel()) for name, p in named)
    return [BlockGroup(label, tuple(f"backbone.{n}" for n in members), sum(sizes[n] for n in members))
            for label, members in names if members]


def describe_groups(groups: list[BlockGroup], lrs: list[float] | None = None) -> list[str]:
    """One line per group, input first: index, name, parameters (and LR when given)."""
    width = max(len(group.name) for group in groups)
    lines = []
    for index, group in enumerate(groups):
        lr = f"  lr {lrs[index]:.3g}" if lrs else ""
        lines.append(f"{index + 1:>3} {group.name:<{width}} {group.num_parameters:>12,} params{lr}")
    return lines


def _timm_groups(backbone: nn.Module, names: list[str]) -> list[tuple[str, list[str]]]:
    from timm.models._manipulate import group_with_matcher

    grouped = group_with_matcher(((n, None) for n in names), backbone.group_matcher(coarse=True))
    return [(_label(members), members) for _, members in sorted(grouped.items())]


def _label(names: list[str]) -> str:
    """A group's name from its parameters: the module prefixes, e.g. `layer1`, `blocks.5+norm`."""
    prefixes: list[str] = []
    for name in names:
        parts = name.split(".")
        # `blocks.3` (a numbered stage of a container), but `layer1`, not `layer1.0`
        numbered = len(parts) > 2 and parts[1].isdigit() and not parts[0][-1].isdigit()
        prefix = ".".join(parts[:2]) if numbered else parts[0]
        if prefix not in prefixes:
            prefixes.append(prefix)
    return "+".join(prefixes) if len(prefixes) <= 3 else f"{prefixes[0]}+...+{prefixes[-1]}"


def _assign(names: list[str], parts: Parts) -> list[tuple[str, list[str]]]:
    """Each parameter to the first part holding one of its module paths; unnamed ones to the top."""
    groups: list[tuple[str, list[str]]] = [(label, []) for label, _ in parts]
    for name in names:
        index = next((i for i, (_, paths) in enumerate(parts)
                      if any(path == "" or name == path or name.startswith(path + ".") for path in paths)),
                     len(parts) - 1)
        groups[index][1].append(name)
    return [group for group in groups if group[1]]


def _torchvision_parts(backbone: nn.Module, arch: str) -> Parts:
    if arch.startswith("squeezenet"):  # the backbone is `features` itself: fire modules between pools
        return _split(backbone, "", _after_pool)
    rule = _RULES.get(type(backbone).__name__)
    return rule(backbone) if rule else _children(backbone)


def _split(sequence: nn.Module, prefix: str, starts: Callable[[int, nn.Module, nn.Module | None], bool]) -> Parts:
    """Consecutive children of `sequence`, a new part where `starts(index, child, previous)`."""
    parts: Parts = []
    previous = None
    for index, (name, child) in enumerate(sequence.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if not parts or starts(index, child, previous):
            parts.append((path, []))
        parts[-1][1].append(path)
        previous = child
    return [(paths[0] if len(paths) == 1 else f"{paths[0]}-{paths[-1].rsplit('.', 1)[-1]}", paths)
            for _, paths in parts]


def _after_pool(index: int, child: nn.Module, previous: nn.Module | None) -> bool:
    return isinstance(previous, nn.MaxPool2d)


def _width(module: nn.Module) -> int | None:
    """Output channels of a block: its last convolution's (None when it has none)."""
    convolutions = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convolutions[-1].out_channels if convolutions else None


def _stem_then_widths(backbone: nn.Module) -> Parts:
    """`features[0]` is the stem; after it a stage is the run of blocks with one output width
    (MobileNet's blocks are single layers, EfficientNet's and ConvNeXt's already stages)."""
    widths: list[int | None] = []

    def starts(index: int, child: nn.Module, previous: nn.Module | None) -> bool:
        widths.append(_width(child) or (widths[-1] if widths else None))
        return index <= 1 or widths[-1] != widths[-2]

    return _split(backbone.features, "features", starts)


def _named_starts(module: nn.Module, prefix: str, first_names: tuple[str, ...]) -> Parts:
    """Children of `module` split where a child's name begins with one of `first_names`."""
    names = [name for name, _ in module.named_children()]
    starts = {i for i, name in enumerate(names) if name.startswith(first_names)}
    return _split(module, prefix, lambda index, child, previous: index in starts)


def _indices(module: nn.Module, prefix: str, first_indices: tuple[int, ...]) -> Parts:
    return _split(module, prefix, lambda index, child, previous: index in first_indices)


def _children(backbone: nn.Module) -> Parts:
    """Fallback: one group per top-level child that holds parameters (its own parameters join the
    first); a backbone with a single such child is split inside that child instead."""
    holders = [name for name, child in backbone.named_children() if any(True for _ in child.parameters())]
    if len(holders) == 1 and len(list(backbone.get_submodule(holders[0]).children())) > 1:
        inner = _children(backbone.get_submodule(holders[0]))
        return [(f"{holders[0]}.{label}", [f"{holders[0]}.{p}" for p in paths]) for label, paths in inner]
    direct = [name for name, _ in backbone.named_parameters(recurse=False)]
    parts = [(name, [name]) for name in holders]
    if not parts:
        return [("backbone", [""])]
    parts[0][1].extend(direct)
    return parts


_RULES: dict[str, Callable[[nn.Module], Parts]] = {
    "ResNet": lambda b: [("stem", ["conv1", "bn1"]), *((f"layer{i}", [f"layer{i}"]) for i in range(1, 5))],
    "VGG": lambda b: [*_split(b.features, "features", _after_pool), ("classifier", ["classifier"])],
    "AlexNet": lambda b: [*_split(b.features, "features", _after_pool), ("classifier", ["classifier"])],
    "DenseNet": lambda b: _named_starts(b.features, "features", ("conv0", "denseblock")),
    "Inception3": lambda b: [("stem", [n for n, _ in b.named_children() if n.startswith("Conv2d")]),
                             *((f"Mixed_{i}", [n for n, _ in b.named_children() if n.startswith(f"Mixed_{i}")])
                               for i in (5, 6, 7))],
    "GoogLeNet": lambda b: [("stem", ["conv1", "conv2", "conv3"]),
                            *((f"inception{i}", [n for n, _ in b.named_children() if n.startswith(f"inception{i}")])
                              for i in (3, 4, 5))],
    "MobileNetV2": _stem_then_widths,
    "MobileNetV3": _stem_then_widths,
    "EfficientNet": _stem_then_widths,
    "ConvNeXt": _stem_then_widths,
    # Swin: patch embedding, then each stage with the patch merging before it (as timm groups it)
    "SwinTransformer": lambda b: _indices(b.features, "features", (0, 1, 2, 4, 6)),
    "VisionTransformer": lambda b: [("stem", ["conv_proj", "class_token", "encoder.pos_embedding"]),
                                    *((n, [f"encoder.layers.{n}"])
                                      for n, _ in b.encoder.layers.named_children())],
    "MaxVit": lambda b: [("stem", ["stem"]), *((f"blocks.{i}", [f"blocks.{i}"]) for i in range(len(b.blocks)))],
    "RegNet": lambda b: [("stem", ["stem"]), *((f"trunk_output.{n}", [f"trunk_output.{n}"])
                                               for n, _ in b.trunk_output.named_children())],
    # MNASNet's `layers`: 8 stem layers, 6 stacks, then the 1x1 head convolution with its norm
    "MNASNet": lambda b: _indices(b.layers, "layers", (0, 8, 9, 10, 11, 12, 13, 14)),
}


def print_block_groups(name: str) -> None:
    """`tlearn models --groups NAME`: the groups of NAME built without weights (2 classes)."""

    model = create_model(name, 2, weights="none")
    groups = block_groups(model)
    print(f"{name}: {len(groups)} block groups, input to output "
          f"({sum(g.num_parameters for g in groups):,} backbone params)")
    for line in describe_groups(groups):
        print(line)
