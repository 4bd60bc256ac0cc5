"""`tlearn eval`, `predict`, `export` and `features`: what they do with a run folder (or a model)
and a dataset or images. Their paths and flags were checked already (checks.py)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from .. import api
from ..data import adapt_preprocessing, resolve_split
from ..errors import UserError
from ..features import FeatureExtractor, run_cache_dir
from ..hub import push_run
from ..infer import (
    TOLERANCE,
    collect_paths,
    describe_gate,
    export_run,
    merge_parts,
    merge_predictions,
    open_engine,
    output_layout,
    part_files,
    part_path,
    predict_files,
    quantize_run,
    share_of_paths,
)
from ..models import create_model
from ..reports import report_run
from ..run_folder import load_model, run_folder_lock
from ..runtime import close_process_group, setup_runtime
from ._checks import label_table
from ._output import print_evaluation, print_predictions

PROGRESS_MIN_FILES = 1000  # fewer files than this, and stderr not a terminal: no progress bar


def evaluate(args: argparse.Namespace) -> int:
    table = label_table(args)
    evaluated = api.evaluation(args.run, args.data, split=args.split, batch_size=args.batch_size,
                               device=args.device, workers=args.workers, tta=args.tta, tta_crops=args.tta_crops,
                               engine=args.engine, **(table.fields() if table else {}))
    if args.report:
        with run_folder_lock(args.run):  # the report is written into the run folder
            runtime = setup_runtime(args.device, amp="auto")  # the page's Grad-CAM may time bf16
            path = report_run(Path(args.run), evaluated.samples, runtime, probs=evaluated.probs,
                              title=f"tlearn evaluation: {args.run} on {args.data} ({args.split})")
        print(f"report: {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(evaluated.result))
    else:
        print_evaluation(evaluated.result)
    return 0


def predict(args: argparse.Namespace) -> int:
    paths, missing = collect_paths(args.paths)
    for item in missing:
        print(f"tlearn: warning: no image matches {item}", file=sys.stderr)
    if not paths:
        raise UserError("no image files found in " + " ".join(args.paths))
    runtime = setup_runtime(args.device)  # under torchrun: joins the process group
    trained = api.load(args.run, device=str(runtime.device))
    top_k = min(args.top_k, len(trained.class_names))
    threshold = trained.min_confidence(args.min_confidence, args.coverage)
    engine = _predict_engine(args, trained, len(paths), runtime)
    layout = output_layout(trained, top_k, bool(threshold), args.output) if args.output else None
    share, stream, parted = _share_and_stream(args, layout, paths, runtime)
    with stream or contextlib.nullcontext():
        write_rows = stream and (lambda rows, unreadable: stream.add([layout.record(row) for row in rows], unreadable))
        with _progress_bar(len(share), runtime.is_main) as progress:
            predictions = predict_files(trained, share, top_k=top_k, batch_size=args.batch_size,
                                        min_confidence=threshold, tta=args.tta, tta_crops=args.tta_crops,
                                        engine=engine, on_rows=write_rows, on_files=progress.update)
    predictions = merge_predictions(predictions, runtime)  # every process's parts are complete after it
    if parted and runtime.is_main:
        merge_parts(args.output, paths)
    close_process_group()
    return 0 if predictions is None else _report_predictions(args, predictions, trained, threshold)


def _share_and_stream(args: argparse.Namespace, layout, paths: list[str], runtime):
    """(this process's files, the stream its rows go into, whether rank 0 merges the parts at the end).
    The stream: --output itself in one process, a part file under torchrun; None without --output.
    `--resume` first merges the parts a killed torchrun prediction left into the output, then skips
    the files the output holds; those need not lead the input then, so the new rows go into a part
    too, and all are merged in input order at the end."""
    if layout is None:
        return share_of_paths(paths, args.batch_size, runtime), None, False
    parted = runtime.distributed or bool(args.resume and part_files(args.output))
    if runtime.is_main and args.resume:
        merge_parts(args.output, paths)
    elif runtime.is_main:
        for part in part_files(args.output):  # of an earlier prediction, killed
            part.unlink()
    if runtime.distributed:
        runtime.barrier()
    if parted:
        done = layout.done(args.output) if args.resume else set()
        stream = layout.stream(part_path(args.output, runtime.rank))
    else:
        stream = layout.stream(args.output, resume=args.resume)
        done = stream.done
    todo = [path for path in paths if path not in done]
    if args.resume and runtime.is_main:
        print(f"--resume: {len(paths) - len(todo)} files already in {args.output}, {len(todo)} left")
    return share_of_paths(todo, args.batch_size, runtime), stream, parted


def _predict_engine(args: argparse.Namespace, trained, count: int, runtime):
    """The engine --engine names, chosen for all the files; under torchrun rank 0 opens it first,
    so that one process exports and caches the run's graph and the others read it."""
    tta = args.tta or args.tta_crops > 1
    if not runtime.is_main:
        runtime.barrier()
    engine = open_engine(trained.model, args.run, "torch" if tta and args.engine == "auto" else args.engine,
                         count=count)
    if runtime.distributed and runtime.is_main:
        runtime.barrier()
    return engine


def _report_predictions(args: argparse.Namespace, predictions, trained, threshold: float | None) -> int:
    print_predictions(predictions, trained)
    if threshold:
        unknown = sum(not row.get("answered", True) for row in predictions.rows)
        print(f"min confidence {threshold:.4f}: {unknown} of {len(predictions.rows)} images answered 'unknown'")
    if args.output:  # streamed as the rows came (merged from the parts under torchrun)
        print(f"wrote {args.output}")
    if not predictions.rows and not args.resume:
        raise UserError("no image could be read")
    return 0


def _progress_bar(total: int, main_process: bool = True) -> tqdm:
    """Images done and images/s on stderr: on a terminal, or in a log for a long job (PROGRESS_MIN_FILES
    files or more, redrawn at most every 30 s there); stdout is left to the predictions. Under
    torchrun, rank 0's share only."""
    terminal = sys.stderr.isatty()
    shown = main_process and (terminal or total >= PROGRESS_MIN_FILES)
    return tqdm(total=total, unit="img", desc="predict", file=sys.stderr, dynamic_ncols=True, disable=not shown,
                mininterval=0.1 if terminal else 30)


def export(args: argparse.Namespace) -> int:
    if args.quantize:
        return export_int8(args)
    report = export_run(args.run, args.format, args.output)
    print(f"wrote {report.path} and {report.path}.json")
    parity = (f"parity on {report.inputs}: max abs logit difference {report.max_abs_diff:.2e} "
              f"(limit {TOLERANCE:.0e}), same {report.agreement} {report.top1_agree}/{report.samples}")
    if not report.ok:  # the file is kept for inspection; the failure is on stderr, exit 1
        print(f"tlearn: error: {parity}: FAILED", file=sys.stderr)
        return 1
    print(f"{parity}: ok")
    return 0


def export_int8(args: argparse.Namespace) -> int:
    """The int8 graph, or exit 2 with the figures when it loses more than --max-drop (QuantizationRefused)."""
    exported = quantize_run(args.run, calibration_images=args.calibration_images, max_drop=args.max_drop,
                            output=args.output)
    print(f"wrote {exported.path} and {exported.path}.json")
    print(f"accuracy gate passed (drop {exported.figures['drop_points']:.2f} <= --max-drop {args.max_drop:g} points): "
          f"{describe_gate(exported.figures)}")
    return 0


def features(args: argparse.Namespace) -> int:
    data_config = api.data_config_for(args.run and Path(args.run), args.data, label_table(args))[0]
    found = resolve_split(data_config, "all")
    if args.run is not None:
        model = load_model(args.run)
    else:
        model = create_model(args.model, 2, args.weights, image_size=args.image_size, aux_logits=False)
        model.info.preprocessing = adapt_preprocessing(model.info.preprocessing, found.samples, args.small_images)
    if args.image_size is not None:
        model.info.preprocessing = model.info.preprocessing.with_image_size(args.image_size)
    runtime = setup_runtime(args.device)
    model.to(runtime.device)
    extractor = FeatureExtractor(runtime, batch_size=args.batch_size, workers=args.workers, backend=args.backend,
                                 cache_dir=run_cache_dir(args.cache_dir, args.use_cache))
    extractor.export(model, found.samples, found.class_names, args.out, split_names=found.split_names)
    return 0


def push(args: argparse.Namespace) -> int:
    where = push_run(args.run, args.repo_id, private=args.private, local_dir=args.local_dir,
                     audit_dir=args.audit)
    print(f"wrote the Hub folder {where}" if args.local_dir else f"pushed {args.run} to {where}")
    return 0
