"""`tlearn audit` and `tlearn models`: a dataset checked before training, and the model names."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..audit import run_audit, summary_lines
from ..config import DataConfig
from ..errors import UserError
from ..models import list_models, print_block_groups
from ._checks import label_table


def audit(args: argparse.Namespace) -> int:
    data = DataConfig(source=args.data).with_table(label_table(args))
    result = run_audit(data, Path(args.out), model_name=args.model, weights=args.weights, device=args.device,
                       batch_size=args.batch_size)
    print("\n".join(summary_lines(result, Path(args.out))))
    return 0


def models(args: argparse.Namespace) -> int:
    if args.groups:
        print_block_groups(args.groups)
        return 0
    rows = list_models(args.pattern)
    if not rows:
        raise UserError(f"no model matches {args.pattern!r}")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'name':<{width}}  {'library':<11}  offline weights")
    for name, library, offline in rows:
        print(f"{name:<{width}}  {library:<11}  {'yes' if offline else 'no'}")
    return 0
