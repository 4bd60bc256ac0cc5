"""`tlearn train`, `demo`, `lr-find` and `select`: build the config from the flags, call the library.
Their paths were checked already (checks.py)."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import api
from ..config import BUILTIN_DATASETS, RunConfig
from ..data import load_data
from ..runtime import close_process_group
from ..select import check_request, format_leaderboard, parse_list, parse_sizes, run_selection
from ..training import CSV_FILE, PLOT_FILE
from ..training import lr_find as find_lr
from ._checks import is_main_process
from ._distill_flags import distill_config_from_flags
from ._flags import config_from_flags
from ._output import print_summary
from ._parser import DEMO_FIXED


def train(args: argparse.Namespace) -> int:
    if args.resume:
        summary, run_dir = api.resume(args.resume)
    else:
        summary, run_dir = _train(config_from_flags(args), args.out, args.overwrite)
    _print_summary(summary, run_dir)
    close_process_group()
    return 0


def distill(args: argparse.Namespace) -> int:
    config = dataclasses.replace(config_from_flags(args, name=args.student), distill=distill_config_from_flags(args))
    data = None if config.data.source in BUILTIN_DATASETS else load_data(config.data, config.train.seed)
    summary, run_dir = api.distill(config, args.out, data=data, overwrite=args.overwrite)
    _print_summary(summary, run_dir)
    close_process_group()
    return 0


def demo(args: argparse.Namespace) -> int:
    summary, run_dir = _train(config_from_flags(args, **DEMO_FIXED), args.out, args.overwrite)
    _print_summary(summary, run_dir)
    close_process_group()
    return 0


def _train(config: RunConfig, out: str | None, overwrite: bool) -> tuple[dict, Path]:
    """Data first (fails fast on bad folders and tables), then the model and the run."""
    data = None if config.data.source in BUILTIN_DATASETS else load_data(config.data, config.train.seed)
    return api.train(config, out, data=data, overwrite=overwrite)


def lr_find(args: argparse.Namespace) -> int:
    finding = find_lr(config_from_flags(args), args.out)
    if is_main_process():
        out = Path(args.out)
        print(finding.describe())
        print(f"wrote {out / CSV_FILE} and {out / PLOT_FILE}")
    close_process_group()
    return 0


def select(args: argparse.Namespace) -> int:
    models, sizes = parse_list(args.models, "--models"), parse_sizes(args.image_sizes)
    config = config_from_flags(args, strategy="two-stage")
    check_request(models, sizes, args.budget, config.model.weights)  # before the data is read
    selection = run_selection(config, models, sizes, args.out, budget=args.budget, finetune_best=args.finetune_best,
                              download=args.download)
    print()
    print(format_leaderboard(selection))
    if selection.best_summary is not None:
        _print_summary(selection.best_summary, selection.best_run)
    return 0 if selection.results else 1


def _print_summary(summary: dict, run_dir) -> None:
    if is_main_process():
        print_summary(summary, run_dir)
