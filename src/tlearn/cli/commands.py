"""Command line: argparse subcommands that build a config and call one library function.

User errors print one line on stderr and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..allocator import configure_allocator
from .flags import config_from_flags
from .parser import DEMO_FIXED, build_parser
from ..config import BUILTIN_DATASETS
from ..errors import UserError
from ..run_folder.guard import check_out_folder, run_folder_lock


def main(argv: list[str] | None = None) -> int:
    # First, before PyTorch allocates anything: keep freed memory instead of re-faulting every
    # step's activations (allocator.py; about 1.5x fine-tuning and 1.7-1.9x eval on 2 cores).
    allocator = configure_allocator()
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose - args.quiet, to_stderr=getattr(args, "json", False))
    logging.getLogger("tlearn").log(logging.INFO if args.command in ("train", "demo", "lr-find") else logging.DEBUG, allocator)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"tlearn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tlearn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tlearn models | head`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        _require_folder(args.resume, "run folder", exists=True)
        from .. import api

        summary, run_dir = api.resume(args.resume)
    elif not args.data:
        raise UserError("train needs --data (a folder, digits, cifar10 or cifar100) or --resume RUN")
    else:
        _check_train_paths(args, args.data)
        summary, run_dir = _train(config_from_flags(args), args.out, args.overwrite)
    _print_summary(summary, run_dir)
    _close_process_group()
    return 0


def _check_train_paths(args: argparse.Namespace, source: str) -> None:
    """Folders training writes into, checked before any data, download or model is touched."""
    if args.out:
        _require_folder(args.out, "--out")
        if hasattr(args, "overwrite") and _is_main_process():  # train and demo; again under the run's lock
            check_out_folder(args.out, args.overwrite)
    if args.cache_dir:
        _require_folder(args.cache_dir, "--cache-dir")
    if source in ("cifar10", "cifar100"):  # downloaded into --data-dir
        _require_folder(args.data_dir, "--data-dir")


def _train(config, out, overwrite: bool = False):
    """Data first (cheap, fails fast on bad folders), then PyTorch, the model and the run."""
    from ..data.sources import load_data

    if config.data.source not in BUILTIN_DATASETS and not os.path.exists(config.data.source):
        raise UserError(f"data folder not found: {config.data.source} (or use {', '.join(BUILTIN_DATASETS)})")
    data = None if config.data.source in BUILTIN_DATASETS else load_data(config.data, config.train.seed)
    from .. import api

    return api.train(config, out, data=data, overwrite=overwrite)


def cmd_lr_find(args: argparse.Namespace) -> int:
    if not args.data:
        raise UserError("lr-find needs --data (a folder, digits, cifar10 or cifar100)")
    _check_train_paths(args, args.data)
    config = config_from_flags(args)
    if config.data.source not in BUILTIN_DATASETS and not os.path.exists(config.data.source):
        raise UserError(f"data folder not found: {config.data.source} (or use {', '.join(BUILTIN_DATASETS)})")
    from ..training.lr_find_command import lr_find
    from ..training.lr_finder import CSV_FILE, PLOT_FILE

    finding = lr_find(config, args.out)
    if _is_main_process():
        out = Path(args.out)
        print(finding.describe())
        print(f"wrote {out / CSV_FILE} and {out / PLOT_FILE}")
    _close_process_group()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _check_train_paths(args, "digits")
    config = config_from_flags(args, **DEMO_FIXED)
    summary, run_dir = _train(config, args.out, args.overwrite)
    _print_summary(summary, run_dir)
    _close_process_group()
    return 0


def _close_process_group() -> None:
    from ..runtime import close_process_group

    close_process_group()


def _is_main_process() -> bool:
    """Under torchrun only rank 0 talks; the others train quietly."""
    return os.environ.get("RANK", "0") == "0"


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a redirected or captured stdout included)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _configure_logging(verbosity: int, to_stderr: bool = False) -> None:
    """The library logs to the "tlearn" logger; the command line shows it on stdout, plain, at
    INFO (-q: warnings only, -v: debug too), or on stderr when stdout is JSON (`eval --json`).
    Under torchrun only rank 0 talks."""
    handler = logging.StreamHandler(sys.stderr) if to_stderr else _Stdout()
    handler.setFormatter(_Format())
    logger = logging.getLogger("tlearn")
    logger.handlers[:] = [handler]
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    logger.setLevel(level if _is_main_process() else logging.ERROR)


def _print_summary(summary: dict, run_dir) -> None:
    if _is_main_process():
        from .output import print_summary

        print_summary(summary, run_dir)


def cmd_eval(args: argparse.Namespace) -> int:
    _check_tta_crops(args.tta_crops)
    _require_folder(args.run, "run folder", exists=True)
    if args.data not in BUILTIN_DATASETS:
        _require_folder(args.data, "--data", exists=True)
    from .. import api

    table = {"labels": args.labels, "path_col": args.path_col, "label_col": args.label_col,
             "label_delim": args.label_delim}
    evaluated = api.evaluation(args.run, args.data, split=args.split, batch_size=args.batch_size,
                               device=args.device, workers=args.workers, tta=args.tta, tta_crops=args.tta_crops,
                               **table)
    result = evaluated.result
    if args.report:
        from ..reports.run_report import report_run
        from ..runtime import setup_runtime

        with run_folder_lock(args.run):  # the report is written into the run folder
            path = report_run(Path(args.run), evaluated.samples, setup_runtime(args.device), probs=evaluated.probs,
                              title=f"tlearn evaluation: {args.run} on {args.data} ({args.split})")
        print(f"report: {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result))
        return 0
    from .output import print_evaluation

    print_evaluation(result)
    return 0


def _check_tta_crops(crops: int) -> None:
    if crops not in (1, 5):  # before any model or data is read
        raise UserError(f"--tta-crops must be 1 or 5, got {crops}")


def cmd_predict(args: argparse.Namespace) -> int:
    _check_tta_crops(args.tta_crops)
    _require_folder(args.run, "run folder", exists=True)
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.output and not args.output.lower().endswith((".csv", ".json")):
        raise UserError(f"--output must end in .csv or .json, got {args.output}")
    if args.output:
        _require_file_target(args.output, "--output")
    from ..infer.prediction import collect_paths, predict_files, write_predictions

    paths, missing = collect_paths(args.paths)
    for item in missing:
        print(f"tlearn: warning: no image matches {item}", file=sys.stderr)
    if not paths:
        raise UserError("no image files found in " + " ".join(args.paths))
    from .. import api

    trained = api.load(args.run, device=args.device)
    top_k = min(args.top_k, len(trained.class_names))
    threshold = trained.min_confidence(args.min_confidence, args.coverage)
    predictions = predict_files(trained, paths, top_k=top_k, batch_size=args.batch_size, min_confidence=threshold,
                                tta=args.tta, tta_crops=args.tta_crops)
    delim = (trained.model.info.label_delim or " ") if trained.multi_label else None
    from .output import print_predictions

    print_predictions(predictions, delim)
    if threshold:
        unknown = sum(not row.get("answered", True) for row in predictions.rows)
        print(f"min confidence {threshold:.4f}: {unknown} of {len(predictions.rows)} images answered 'unknown'")
    if args.output:
        write_predictions(predictions, args.output, top_k, delim, trained.class_names if delim else None)
        print(f"wrote {args.output}")
    if not predictions.rows:
        raise UserError("no image could be read")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _require_folder(args.run, "run folder", exists=True)
    if args.output:
        _require_file_target(args.output, "--output")
    from ..infer.export import TOLERANCE, export_run

    report = export_run(args.run, args.format, args.output)
    print(f"wrote {report.path} and {report.path}.json")
    parity = (f"parity on {report.inputs}: max abs logit difference {report.max_abs_diff:.2e} "
              f"(limit {TOLERANCE:.0e}), same {report.agreement} {report.top1_agree}/{report.samples}")
    if not report.ok:  # the file is kept for inspection; the failure is on stderr, exit 1
        print(f"tlearn: error: {parity}: FAILED", file=sys.stderr)
        return 1
    print(f"{parity}: ok")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.registry import list_models

    if args.groups:
        from ..models.block_groups import print_block_groups

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


def cmd_features(args: argparse.Namespace) -> int:
    if (args.run is None) == (args.model is None):
        raise UserError("features needs a run folder or --model NAME (one of them)")
    if args.run is not None:
        _require_folder(args.run, "run folder", exists=True)
    if args.data not in BUILTIN_DATASETS:
        _require_folder(args.data, "--data", exists=True)
    _require_file_target(args.out, "--out")
    if args.cache_dir:
        _require_folder(args.cache_dir, "--cache-dir")
    if args.image_size is not None and args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")
    from ..api import data_config_for
    from ..data.sources import resolve_split

    data_config = data_config_for(args.run and Path(args.run), args.data, labels=args.labels,
                                  path_col=args.path_col, label_col=args.label_col, label_delim=args.label_delim)[0]
    found = resolve_split(data_config, "all")
    samples, names, split = found.samples, found.class_names, found.split_names
    from ..features.extractor import FeatureExtractor, run_cache_dir
    from ..runtime import setup_runtime

    if args.run is not None:
        from ..run_folder.checkpoint import load_model

        model = load_model(args.run)
    else:
        from ..models.factory import create_model
        from ..data.small_images import adapt_preprocessing

        model = create_model(args.model, 2, args.weights, image_size=args.image_size, aux_logits=False)
        model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, samples, args.small_images)
    if args.image_size is not None:
        model.info.preprocessing = model.info.preprocessing.with_image_size(args.image_size)
    runtime = setup_runtime(args.device)
    model.to(runtime.device)
    cache_dir = run_cache_dir(args.cache_dir, args.use_cache)
    extractor = FeatureExtractor(runtime, batch_size=args.batch_size, workers=args.workers, backend=args.backend,
                                 cache_dir=cache_dir)
    extractor.export(model, samples, names, args.out, split_names=split)
    return 0


def _single_process(command: str) -> None:
    """select and audit are one-process jobs: under torchrun every rank would write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"tlearn {command} runs in one process; start it without torchrun")


def cmd_select(args: argparse.Namespace) -> int:
    _single_process("select")
    if not args.data:
        raise UserError("select needs --data (a folder, digits, cifar10 or cifar100)")
    _check_train_paths(args, args.data)
    if args.data not in BUILTIN_DATASETS:
        _require_folder(args.data, "--data", exists=True)
    from ..select.selection import check_request, parse_list, parse_sizes

    models, sizes = parse_list(args.models, "--models"), parse_sizes(args.image_sizes)
    config = config_from_flags(args, strategy="two-stage")
    check_request(models, sizes, args.budget, config.model.weights)  # before the data is read
    if args.finetune_best:
        check_out_folder(Path(args.out) / "best")
    from ..select.selection import run_selection
    from ..select.page import format_leaderboard

    selection = run_selection(config, models, sizes, args.out, budget=args.budget, finetune_best=args.finetune_best,
                              download=args.download)
    print()
    print(format_leaderboard(selection))
    if selection.best_summary is not None:
        _print_summary(selection.best_summary, selection.best_run)
    return 0 if selection.results else 1


def cmd_audit(args: argparse.Namespace) -> int:
    _single_process("audit")
    if args.data not in BUILTIN_DATASETS:
        _require_folder(args.data, "--data", exists=True)
    _require_folder(args.out, "--out")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    from ..audit.run import run_audit, summary_lines
    from ..config import DataConfig

    data = DataConfig(source=args.data, labels=args.labels, path_col=args.path_col, label_col=args.label_col,
                      label_delim=args.label_delim)
    result = run_audit(data, Path(args.out), model_name=args.model, weights=args.weights, device=args.device,
                       batch_size=args.batch_size)
    print("\n".join(summary_lines(result, Path(args.out))))
    return 0


def _require_folder(path: str, what: str, exists: bool = False) -> None:
    """`path` is a folder, or (unless it must exist) can be made one. A file there or above it
    would otherwise surface as an OSError deep inside training, prediction or export."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise UserError(f"{what} {path} is a file; a folder is expected")
    if exists:
        raise UserError(f"{what} not found: {path}")
    _require_parent_folder(path, what)


def _require_file_target(path: str, what: str) -> None:
    """`path` is a file to write: not an existing folder, and its folder can be made."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder; a file name is expected")
    _require_parent_folder(path, what)


def _require_parent_folder(path: str, what: str) -> None:
    """The closest existing path above `path` must be a folder, or `path` cannot be created."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{what} {path} cannot be created: {parent} is a file, not a folder")


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "lr-find": cmd_lr_find, "eval": cmd_eval, "models": cmd_models,
            "features": cmd_features, "predict": cmd_predict, "export": cmd_export, "select": cmd_select,
            "audit": cmd_audit}


if __name__ == "__main__":
    sys.exit(main())
