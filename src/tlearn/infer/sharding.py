"""`tlearn predict` under torchrun: each process predicts its own contiguous share of the files,
streaming its rows into its own part file beside the output (OUTPUT.part-RANK, streaming.py), and
rank 0 merges the output and the parts in input order into the one output, then removes the parts.

The shares are cut at multiples of the batch size, so every batch holds the files it would hold in
one process: the same batches through the same engine give the same numbers, and the merged file
equals the one-process file byte for byte (tests/infer/test_predict_torchrun.py). A kill leaves each
process's finished batches in its part; `--resume` first merges the parts into the output, then the
processes share the files not done. Those are whole batches of the input (a batch's rows are
written at once), so cut again at multiples of the batch size they make the same batches.
"""
from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path

from ..files import atomic_write
from ..runtime import Runtime
from .prediction import Predictions
from .streaming import read_csv_rows, read_json_document


def part_path(output: str | Path, rank: int) -> Path:
    """The file a process streams its rows into under torchrun."""
    return Path(f"{output}.part-{rank}")


def merge_parts(output: str | Path, order: list[str]) -> None:
    """The output's rows and every part file's (of any earlier world size too), in the input `order`,
    written whole into the output; then the parts removed. Rank 0's job, the other ranks waiting."""
    output, parts = Path(output), part_files(output)
    if not parts:
        return
    sources = ([output] if output.is_file() else []) + parts
    position = {path: index for index, path in enumerate(order)}
    if output.suffix.lower() == ".json":
        records, unreadable = [], []
        for source in sources:
            more_records, more_unreadable = read_json_document(source)
            records, unreadable = records + more_records, unreadable + more_unreadable
        document = {"predictions": _in_order(records, position), "unreadable": _in_order(unreadable, position)}
        atomic_write(output, json.dumps(document, indent=2, ensure_ascii=False))
    else:
        header, rows = None, []
        for source in sources:
            lines = [line for line in read_csv_rows(source)[1] if line]
            header, rows = header or lines[:1], rows + lines[1:]
        buffer = io.StringIO()
        csv.writer(buffer).writerows((header or []) + _in_order(rows, position))
        atomic_write(output, buffer.getvalue())
    for part in parts:
        part.unlink()


def part_files(output: str | Path) -> list[Path]:
    """The part files beside `output` (a killed torchrun prediction leaves them)."""
    return [Path(name) for name in sorted(glob.glob(glob.escape(str(output)) + ".part-*"))]


def _in_order(items: list, position: dict[str, int]) -> list:
    """`items` (CSV rows, the path first, or JSON records) once per path, in input order; paths not in
    the input (a resumed file of other inputs) first, as they were."""
    path_of = (lambda item: item["path"]) if items and isinstance(items[0], dict) else (lambda item: item[0])
    seen: set[str] = set()
    unique = [item for item in items if not (path_of(item) in seen or seen.add(path_of(item)))]
    return sorted(unique, key=lambda item: position.get(path_of(item), -1))


def share_of_paths(paths: list[str], batch_size: int, runtime: Runtime) -> list[str]:
    """This process's files: whole batches, contiguous, ranks in order (the last may get fewer)."""
    if not runtime.distributed:
        return paths
    batches = -(-len(paths) // batch_size)
    first = batches * runtime.rank // runtime.world_size
    last = batches * (runtime.rank + 1) // runtime.world_size
    return paths[first * batch_size:last * batch_size]


def merge_predictions(predictions: Predictions, runtime: Runtime) -> Predictions | None:
    """Every process's rows and unreadable files, in rank order (= input order), on rank 0; None on
    the other ranks."""
    if not runtime.distributed:
        return predictions
    import torch.distributed as dist

    gathered = [None] * runtime.world_size if runtime.is_main else None
    dist.gather_object((predictions.rows, predictions.unreadable), gathered, dst=0)
    if not runtime.is_main:
        return None
    return Predictions([row for rows, _ in gathered for row in rows],
                       [item for _, unreadable in gathered for item in unreadable], predictions.min_confidence)
