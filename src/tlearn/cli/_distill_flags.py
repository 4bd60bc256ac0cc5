"""The flags of `tlearn distill TEACHER_RUN --student MODEL ...`: train's flags (the student's data,
strategy, epochs, techniques, seed), --student in place of --model, and the distillation's own
(config.DistillConfig's fields)."""
from __future__ import annotations

import argparse
import dataclasses
import os

from ..config import DistillConfig
from ._flags import PSEUDO_FIELDS, _add_flag, add_config_flags

# A distillation's probe trains the head on the loop (the KL term needs it), not by L-BFGS.
DISTILL_DEFAULTS = {"head_solver": "sgd"}


def add_distill_flags(distill: argparse.ArgumentParser) -> None:
    distill.add_argument("teacher", metavar="TEACHER_RUN", help="the teacher's (finished) run folder")
    distill.add_argument("--student", required=True, help="the student model: a name as train's --model takes")
    distill.add_argument("--out", default=None, help="the student's run folder (default runs/<timestamp>)")
    distill.add_argument("--overwrite", action="store_true",
                         help="--out holds a run: delete that run's files (only those) and train anew")
    group = distill.add_argument_group("distillation")
    for item in dataclasses.fields(DistillConfig):
        if item.metadata.get("cli", True):
            _add_flag(group, item, item.default)
    add_config_flags(distill, skip=frozenset({"name"}) | PSEUDO_FIELDS, defaults=DISTILL_DEFAULTS)


def distill_config_from_flags(args: argparse.Namespace) -> DistillConfig:
    values = {item.name: getattr(args, item.metadata.get("dest") or item.name)
              for item in dataclasses.fields(DistillConfig) if item.metadata.get("cli", True)}
    return DistillConfig(teacher=os.path.abspath(args.teacher), **values)  # resumable from any folder
