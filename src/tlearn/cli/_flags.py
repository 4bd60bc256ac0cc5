"""Command-line flags built from the config dataclasses, so each default and help text is
written once (config.py), grouped by section the way timm's train.py groups its arguments."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig

SECTIONS = (DataConfig, ModelConfig, TrainConfig)
GROUP_TITLES = {"data": "data", "model": "model", "strategy": "strategy", "optimizer": "optimiser",
                "runtime": "device and precision", "output": "cache and outputs",
                "pseudo": "pseudo-labels (self-training on --unlabeled images)"}
_TYPES = {"int": int, "float": float, "str": str}
# `tlearn train --unlabeled` (self-training); the other commands that take train's flags have none of these.
PSEUDO_FIELDS = frozenset({"pseudo_unlabeled", "pseudo_rounds", "pseudo_share", "pseudo_weight"})


def add_config_flags(parser: argparse.ArgumentParser, *, defaults: dict[str, Any] | None = None,
                     skip: frozenset[str] = frozenset()) -> None:
    """One flag per config field (but those in `skip`), with `defaults` overriding the config's."""
    defaults = defaults or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section in SECTIONS:
        for item in dataclasses.fields(section):
            meta = item.metadata
            if not meta.get("cli", True) or item.name in skip:
                continue
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(GROUP_TITLES[meta["group"]])
            _add_flag(groups[meta["group"]], item, defaults.get(item.name, item.default))


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    """--data on eval, features and audit, with train's help text (config.py writes it once)."""
    source = next(item for item in dataclasses.fields(DataConfig) if item.name == "source")
    parser.add_argument("--data", required=True, help=source.metadata["help"])


def add_table_flags(parser: argparse.ArgumentParser) -> None:
    """--labels, --path-col, --label-col, --label-delim on eval and features, with train's help texts."""
    fields = {item.name: item for item in dataclasses.fields(DataConfig)}
    for name in ("labels", "path_col", "label_col", "label_delim"):
        _add_flag(parser, fields[name], None)


def _add_flag(group, item: dataclasses.Field, default: Any) -> None:
    meta = item.metadata
    flag = meta["flag"] or "--" + item.name.replace("_", "-")
    dest = meta["dest"] or item.name
    if item.type == "bool":  # a False default is switched on by --x, a True one off by --no-x
        action = "store_false" if item.default else "store_true"
        group.add_argument(flag, dest=dest, action=action, default=default, help=meta["help"])
        return
    kind = meta.get("parse") or _TYPES[item.type.replace(" | None", "")]
    text = meta["help"] if default == item.default else meta["help"].split("; default")[0]
    hint = text if default is None else f"{text} (default {default})"
    if meta.get("const") is not None:  # the flag alone gives `const` (--amp: on)
        group.add_argument(flag, dest=dest, type=kind, default=default, choices=meta["choices"], help=hint,
                           nargs="?", const=meta["const"])
        return
    group.add_argument(flag, dest=dest, type=kind, default=default, choices=meta["choices"], help=hint)


def config_from_flags(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """The RunConfig the parsed flags describe; `fixed` gives fields that have no flag (by field name)."""
    parts = []
    for section in SECTIONS:
        values = {}
        for item in dataclasses.fields(section):
            dest = item.metadata.get("dest") or item.name
            if item.name in fixed:
                values[item.name] = fixed[item.name]
            elif hasattr(args, dest):
                values[item.name] = getattr(args, dest)
        parts.append(section(**values))
    return RunConfig(*parts)
