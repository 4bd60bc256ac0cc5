"""Predict labels for image files with a run folder's model and preprocessing.

Multi-label runs write, per image, the labels at or above their thresholds (joined with the
run's label delimiter, as its table wrote them) and every class's probability."""
from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import eval_transform_uint8, is_image_name, open_rgb
from ..errors import UserError, first_line
from ..files import atomic_write
from ..task import MULTI_LABEL, Task
from .engines import Engine
from .streaming import Layout
from .trained import TrainedModel, warn_if_views_and_threshold


@dataclass
class Predictions:
    rows: list[dict]  # path, labels, probs, answered (multi-label: scores, every class's probability, no answered)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    min_confidence: float | None = None  # the threshold below which a label is "unknown", when one applied


def collect_paths(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Image files from files, folders (recursively) and globs; (found, inputs that matched nothing)."""
    found, missing = [], []
    for item in inputs:
        if os.path.isdir(item):
            for directory, subdirs, files in os.walk(item):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                found += [os.path.join(directory, f) for f in sorted(files)
                          if is_image_name(f) and not f.startswith(".")]
        elif os.path.isfile(item):
            found.append(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            files = [m for m in matches if os.path.isfile(m) and is_image_name(m)]
            if files:
                found += files
            else:
                missing.append(item)
    return list(dict.fromkeys(found)), missing


def predict_files(trained: TrainedModel, paths: list[str], top_k: int = 1, batch_size: int = 32, *,
                  min_confidence: float | None = None, tta: bool = False, tta_crops: int = 1,
                  engine: Engine | None = None, on_rows: Callable[[list[dict], list], None] | None = None,
                  on_files: Callable[[int], None] | None = None) -> Predictions:
    """Batched prediction, decoding a batch at a time; files that fail to decode are listed, not fatal.
    Below `min_confidence` (calibrated top probability) an image's label is "unknown".
    `tta`, `tta_crops`: test-time augmentation, the views' logits averaged (tta.py).
    `engine` (engines.py: onnxruntime, the int8 graph): the batches go through it, decoded as uint8
    crops on a thread pool; None or PyTorch eager: through the model itself.
    `on_rows`: called with each batch's rows and the (path, reason) of the files that failed since the
    last call, as soon as they exist (predict's streamed file);
    `on_files`: with the number of files each batch settled, unreadable ones included (the progress bar)."""
    if engine is not None and engine.name != "torch":
        if tta or tta_crops > 1:
            raise UserError("--tta runs in PyTorch: use --engine torch with it")
        return _predict_with_engine(trained, paths, top_k, batch_size, min_confidence, engine, on_rows, on_files)
    result = Predictions([], min_confidence=min_confidence or None)
    transform = trained.views_transform(tta, tta_crops)
    warn_if_views_and_threshold(transform, min_confidence)
    batch: list[tuple[str, torch.Tensor]] = []
    settled, failed = [0], [0]  # files tried, and unreadable files listed, up to the last flush

    def flush():
        rows = []
        if batch:
            outputs = trained.predict_batch(torch.stack([tensor for _, tensor in batch]), top_k, min_confidence)
            rows = _rows([path for path, _ in batch], outputs)
            result.rows += rows
            batch.clear()
        if on_rows and (rows or len(result.unreadable) > failed[0]):
            on_rows(rows, result.unreadable[failed[0]:])
        failed[0] = len(result.unreadable)
        if on_files and settled[0]:
            on_files(settled[0])
            settled[0] = 0

    for path in paths:
        settled[0] += 1
        try:
            batch.append((path, trained.prepare(path, transform)))
        except Exception as error:  # unreadable, truncated, not an image
            result.unreadable.append((path, first_line(error)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return result


def _rows(paths: list[str], outputs: list[dict]) -> list[dict]:
    return [{"path": path, "labels": output["labels"], "probs": output["probs"],
             **{key: output[key] for key in ("scores", "answered", "guess") if key in output}}
            for path, output in zip(paths, outputs)]


def _predict_with_engine(trained: TrainedModel, paths: list[str], top_k: int, batch_size: int,
                         min_confidence: float | None, engine: Engine, on_rows=None, on_files=None) -> Predictions:
    """predict_files through `engine`: each batch's files decoded in parallel (Pillow releases the
    GIL), the next batch decoding while this one runs."""
    result = Predictions([], min_confidence=min_confidence or None)
    transform = eval_transform_uint8(trained.preprocessing)

    def decode(path: str):
        try:
            return transform(open_rgb(path, transform.decode_size))
        except Exception as error:  # unreadable, truncated, not an image
            return first_line(error)

    batches = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="tlearn-decode") as pool:
        pending = [pool.map(decode, batch) for batch in batches[:1]]
        for index, batch in enumerate(batches):
            decoded = list(pending.pop(0))
            if index + 1 < len(batches):
                pending.append(pool.map(decode, batches[index + 1]))
            good = [(path, crop) for path, crop in zip(batch, decoded) if isinstance(crop, torch.Tensor)]
            failed = [(path, crop) for path, crop in zip(batch, decoded) if isinstance(crop, str)]
            result.unreadable += failed
            rows = []
            if good:
                outputs = trained.answer(engine.logits(torch.stack([crop for _, crop in good])), top_k, min_confidence)
                rows = _rows([path for path, _ in good], outputs)
                result.rows += rows
            if on_rows and (rows or failed):
                on_rows(rows, failed)
            if on_files:
                on_files(len(batch))
    return result


def write_predictions(predictions: Predictions, output: str | Path, top_k: int, trained: TrainedModel) -> None:
    """A .csv or .json file, in the columns of the model's task (task.py)."""
    output = Path(output)
    if output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"--output must end in .csv or .json, got {output.name}")
    thresholded = predictions.min_confidence is not None
    if output.suffix.lower() == ".json":
        data = [json_record(row, trained, thresholded) for row in predictions.rows]
        atomic_write(output, json.dumps({"predictions": data, "unreadable": [
            {"path": p, "reason": why} for p, why in predictions.unreadable]}, indent=2, ensure_ascii=False))
        return
    if trained.task.multi_label:
        _write_multi_label_csv(predictions, output, trained.label_join, trained.class_names)
        return
    header = csv_header(trained, top_k, thresholded)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(csv_cells(row, trained, header, thresholded) for row in predictions.rows)
    atomic_write(output, buffer.getvalue())


def csv_header(trained: TrainedModel, top_k: int, thresholded: bool) -> list[str]:
    """The CSV columns of the model's task (task.py); "answered" and "guess" when a threshold applies."""
    header = trained.task.prediction_columns(top_k, trained.class_names)
    return header + (["answered", "guess"] if thresholded and not trained.task.multi_label else [])


def csv_cells(row: dict, trained: TrainedModel, header: list[str], thresholded: bool) -> list[str]:
    """One prediction row as the CSV's cells."""
    if trained.task.multi_label:
        return [row["path"], trained.label_join.join(row["labels"]),
                *(f"{row['scores'][name]:.6f}" for name in trained.class_names)]
    cells = [row["path"]]
    for label, prob in zip(row["labels"], row["probs"]):
        cells += [label, f"{prob:.6f}"]
    width = len(header) - (2 if thresholded else 0)
    cells += [""] * (width - len(cells))  # fewer classes than --top-k
    if thresholded:
        cells += [str(row.get("answered", True)).lower(), row.get("guess", row["labels"][0])]
    return cells


def json_record(row: dict, trained: TrainedModel, thresholded: bool) -> dict:
    """One prediction row as the JSON file's record: the top labels with their probabilities (and
    "answered", "guess" when a threshold applies); multi-label: the labels and every class's probability."""
    if trained.task.multi_label:
        return {"path": row["path"], "labels": row["labels"], "probs": row["scores"]}
    return {"path": row["path"], "predictions": [{"label": l, "prob": p} for l, p in zip(row["labels"], row["probs"])],
            **({"answered": row["answered"], "guess": row.get("guess", row["labels"][0])} if thresholded else {})}


def output_layout(trained: TrainedModel, top_k: int, thresholded: bool, output: str | Path) -> Layout:
    """The form of --output's rows (streaming.py), .csv or .json, for this model, top-k and threshold."""
    header = csv_header(trained, top_k, thresholded)
    keys = ["path", "labels", "probs"] if trained.task.multi_label else \
        ["path", "predictions", *(["answered", "guess"] if thresholded else [])]

    def fits(record: dict) -> bool:
        if trained.task.multi_label:
            return list(record) == keys and list(record["probs"]) == trained.class_names
        return list(record) == keys and len(record["predictions"]) == top_k

    def record(row: dict) -> list[str] | dict:
        return json_record(row, trained, thresholded) if json_file else csv_cells(row, trained, header, thresholded)

    json_file = Path(output).suffix.lower() == ".json"
    return Layout(".json" if json_file else ".csv", header, fits, record)


def _write_multi_label_csv(predictions: Predictions, output: Path, label_delim: str, class_names: list[str]) -> None:
    """path, labels (joined with `label_delim`), prob_<class> for every class."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(Task(MULTI_LABEL).prediction_columns(0, class_names))
    for row in predictions.rows:
        writer.writerow([row["path"], label_delim.join(row["labels"]),
                         *(f"{row['scores'][name]:.6f}" for name in class_names)])
    atomic_write(output, buffer.getvalue())
