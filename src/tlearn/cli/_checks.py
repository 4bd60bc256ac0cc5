"""Each command's cheap checks, run before its module imports the library (and PyTorch): paths
that must exist or can be made, flag values argparse cannot judge, one-process commands. No
torch here; `tlearn --help` and these errors answer at once."""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ..config import BUILTIN_DATASETS, LabelTable
from ..data import require_data_source
from ..errors import UserError
from ..hub import check_repo_id, is_hub_name
from ..run_folder import check_out_folder


def is_main_process() -> bool:
    """Under torchrun only rank 0 talks and writes; the others train quietly."""
    return os.environ.get("RANK", "0") == "0"


def label_table(args: argparse.Namespace) -> LabelTable | None:
    """--labels, --path-col, --label-col and --label-delim as one table spec."""
    return LabelTable.of(args.labels, args.path_col, args.label_col, args.label_delim)


def check_train(args: argparse.Namespace) -> None:
    if args.resume:
        require_folder(args.resume, "run folder", exists=True)
    elif not args.data:
        raise UserError("train needs --data (a folder, digits, cifar10 or cifar100) or --resume RUN")
    else:
        check_train_paths(args, args.data)
        check_unlabeled_flag(args)


def check_unlabeled_flag(args: argparse.Namespace) -> None:
    """train --unlabeled: a folder of image files beside a folder data set, single-label."""
    if args.pseudo_unlabeled is None:
        return
    if args.data in BUILTIN_DATASETS:
        raise UserError(f"--unlabeled needs --data FOLDER (image files), not the built-in data set {args.data}")
    if args.label_delim is not None:
        raise UserError("--unlabeled is single-label: a labels table with --label-delim is multi-label")
    require_folder(args.pseudo_unlabeled, "--unlabeled", exists=True)


def check_distill(args: argparse.Namespace) -> None:
    require_folder(args.teacher, "teacher run folder", exists=True)
    if args.unlabeled:
        require_folder(args.unlabeled, "--unlabeled", exists=True)
    if not args.data:
        raise UserError("distill needs --data (a folder, digits, cifar10 or cifar100)")
    check_train_paths(args, args.data)


def check_push(args: argparse.Namespace) -> None:
    require_folder(args.run, "run folder", exists=True)
    check_repo_id(args.repo_id)
    if args.local_dir:
        require_folder(args.local_dir, "--local-dir")
    if args.audit:
        require_folder(args.audit, "--audit", exists=True)


def check_lr_find(args: argparse.Namespace) -> None:
    if not args.data:
        raise UserError("lr-find needs --data (a folder, digits, cifar10 or cifar100)")
    check_train_paths(args, args.data)


def check_select(args: argparse.Namespace) -> None:
    single_process("select")
    if not args.data:
        raise UserError("select needs --data (a folder, digits, cifar10 or cifar100)")
    check_train_paths(args, args.data)
    if args.finetune_best:  # the run it trains, refused now rather than after the probes
        check_out_folder(Path(args.out) / "best")


def check_train_paths(args: argparse.Namespace, source: str) -> None:
    """The data, and the folders training writes into, before any data, download or model is touched."""
    require_data_source(source)
    if args.out:
        require_folder(args.out, "--out")
        if hasattr(args, "overwrite") and is_main_process():  # train and demo; again under the run's lock
            check_out_folder(args.out, args.overwrite)
    if args.cache_dir:
        require_folder(args.cache_dir, "--cache-dir")
    if source in ("cifar10", "cifar100"):  # downloaded into --data-dir
        require_folder(args.data_dir, "--data-dir")


def check_eval(args: argparse.Namespace) -> None:
    check_tta_crops(args.tta_crops)
    require_folder(args.run, "run folder", exists=True)
    require_data_source(args.data)


def check_predict(args: argparse.Namespace) -> None:
    check_tta_crops(args.tta_crops)
    if not is_hub_name(args.run):  # hf-hub:USER/NAME: downloaded by the command
        require_folder(args.run, "run folder", exists=True)
    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.output and not args.output.lower().endswith((".csv", ".json")):
        raise UserError(f"--output must end in .csv or .json, got {args.output}")
    if args.output:
        require_file_target(args.output, "--output")
    if args.resume and not args.output:
        raise UserError("--resume continues the rows of --output F.csv or F.json; give that file")


def check_export(args: argparse.Namespace) -> None:
    require_folder(args.run, "run folder", exists=True)
    if args.quantize and args.format != "onnx":
        raise UserError(f"--quantize int8 exports ONNX; it cannot go with --format {args.format}")
    if args.calibration_images < 1:
        raise UserError(f"--calibration-images must be at least 1, got {args.calibration_images}")
    if args.output:
        require_file_target(args.output, "--output")


def check_serve(args: argparse.Namespace) -> None:
    single_process("serve")
    if is_hub_name(args.run):  # hf-hub:USER/NAME: downloaded when the model loads
        check_repo_id(args.run.split(":", 1)[1])
    else:
        require_folder(args.run, "run folder", exists=True)
        for name in ("model.json", "model.safetensors"):
            if not os.path.isfile(os.path.join(args.run, name)):
                raise UserError(f"{args.run} has no {name}: serve needs a finished run folder")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    for flag, value in (("--max-batch", args.max_batch), ("--max-body-mb", args.max_body_mb)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value:g}")
    if args.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms:g}")


def check_features(args: argparse.Namespace) -> None:
    if (args.run is None) == (args.model is None):
        raise UserError("features needs a run folder or --model NAME (one of them)")
    if args.run is not None:
        require_folder(args.run, "run folder", exists=True)
    require_data_source(args.data)
    require_file_target(args.out, "--out")
    if args.cache_dir:
        require_folder(args.cache_dir, "--cache-dir")
    if args.image_size is not None and args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")


def check_audit(args: argparse.Namespace) -> None:
    single_process("audit")
    require_data_source(args.data)
    require_folder(args.out, "--out")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")


def check_suggest(args: argparse.Namespace) -> None:
    single_process("suggest")
    require_folder(args.pool, "--pool", exists=True)
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.run is not None and args.model is not None:
        raise UserError("suggest takes a run folder (--run) or a model (--model), not both")
    if args.run is not None:
        require_folder(args.run, "--run", exists=True)
    if args.labels is not None and os.path.isdir(args.labels):
        raise UserError(f"--labels {args.labels} is a folder; a table (.csv, .tsv) is expected")
    if args.labels is not None and not os.path.exists(args.labels):
        raise UserError(f"--labels not found: {args.labels}")
    if not args.out.lower().endswith(".csv"):
        raise UserError(f"--out must end in .csv, got {args.out}")
    require_file_target(args.out, "--out")
    if args.cache_dir:
        require_folder(args.cache_dir, "--cache-dir")
    if args.image_size is not None and args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")


def check_label(args: argparse.Namespace) -> None:
    single_process("label")
    require_folder(args.pool, "--pool", exists=True)
    if args.run is not None and args.model is not None:
        raise UserError("label takes a run folder (--run) or a model (--model), not both")
    if args.run is not None:
        require_folder(args.run, "--run", exists=True)
    if os.path.isdir(args.labels):
        raise UserError(f"--labels {args.labels} is a folder; a table (.csv) is expected")
    if not os.path.exists(args.labels) and not args.labels.lower().endswith(".csv"):
        raise UserError(f"--labels must end in .csv to be created, got {args.labels}")
    require_file_target(args.labels, "--labels")
    if args.review is not None:
        require_folder(args.review, "--review", exists=True)
        if not os.path.isfile(os.path.join(args.review, "label_issues.csv")):
            raise UserError(f"--review {args.review} has no label_issues.csv: give a folder tlearn audit wrote")
    if args.refit_every < 1:
        raise UserError(f"--refit-every must be at least 1, got {args.refit_every}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if args.cache_dir:
        require_folder(args.cache_dir, "--cache-dir")
    if args.image_size is not None and args.image_size < 16:
        raise UserError(f"--image-size must be at least 16, got {args.image_size}")


def check_tta_crops(crops: int) -> None:
    if crops not in (1, 5):
        raise UserError(f"--tta-crops must be 1 or 5, got {crops}")


def single_process(command: str) -> None:
    """select and audit are one-process jobs: under torchrun every rank would write the same files."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"tlearn {command} runs in one process; start it without torchrun")


def require_folder(path: str, what: str, exists: bool = False) -> None:
    """`path` is a folder, or (unless it must exist) can be made one. A file there or above it
    would otherwise surface as an OSError deep inside training, prediction or export."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        raise UserError(f"{what} {path} is a file; a folder is expected")
    if exists:
        raise UserError(f"{what} not found: {path}")
    _require_parent_folder(path, what)


def require_file_target(path: str, what: str) -> None:
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


CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": check_train, "demo": lambda args: check_train_paths(args, "digits"), "lr-find": check_lr_find,
    "select": check_select, "eval": check_eval, "predict": check_predict, "export": check_export,
    "features": check_features, "audit": check_audit, "serve": check_serve, "models": lambda args: None,
    "suggest": check_suggest, "distill": check_distill, "push": check_push,
    "label": check_label,
}
