"""Labels from a table: a .csv or .tsv file (header row) of image paths and labels.

Read with the standard csv module: a .tsv file is tab-separated; any other is split on whichever
of , ; tab | splits its header into the most cells (a semicolon CSV from a European spreadsheet,
a TSV named .csv). Every row must have as many cells as the header: an unquoted comma in a path
would otherwise shift the label column and invent labels. Columns are found by header name in
any case (or named by --path-col / --label-col); a header naming a used column twice is refused; a
`split` column (train/val/valid/validation/test) or an `is_valid` column (true/false/1/0)
assigns rows to splits; a row whose `removed` column is 1 (true, yes) is left out, as if absent.
Paths are relative to the data root; an id without an image
extension matches the one image file with that stem. Every file under the root is listed
once (`FileIndex`), never one glob per row: tables run to 100k rows.

A label cell becomes a tuple of labels (`label_values`): exactly one for single-label data;
a multi-label delimiter (`--label-delim`) splits the cell there and nowhere else. Multi-label
samples carry multi-hot tuples (one 0/1 per class, in class order); an empty cell is a valid
image with no labels.
"""
from __future__ import annotations

import csv
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from ._folders import unusable_reasons
from .images import IMAGE_SUFFIXES
from .samples import FileSamples, stratified_split

PATH_COLUMNS = ("file", "filename", "path", "image", "image_id", "id")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category", "tags")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
REMOVED_VALUES = ("1", "true", "yes")  # a `removed` column's cell that leaves the row out
IS_VALID_VALUES = {"true": "val", "1": "val", "false": "train", "0": "train"}
DELIMITERS = (",", ";", "\t", "|")  # in tie-breaking order: a tie goes to the comma
DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()  # (table, delimiter) already logged: a run reads its table per split


@dataclass(frozen=True, slots=True)  # slots: a table of 100k rows is 100k of these
class TableRow:
    row: int  # the row number a spreadsheet shows: the header is row 1
    path: str  # the path cell as written
    labels: tuple[str, ...]  # () when the label cell is empty
    split: str | None  # train | val | test from a split or is_valid column; None without one


@dataclass
class Table:
    path: Path
    rows: list[TableRow]
    path_col: str
    label_col: str
    split_col: str | None  # the header of the split or is_valid column

    @property
    def has_test(self) -> bool:
        return any(row.split == "test" for row in self.rows)


def label_values(cell: str, delim: str | None = None) -> tuple[str, ...]:
    """The labels of one cell: the stripped cell, or its parts split on `delim` (empty parts dropped)."""
    parts = cell.split(delim) if delim else [cell]
    return tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))


def read_table(path: str | Path, path_col: str | None = None, label_col: str | None = None,
               label_delim: str | None = None) -> Table:
    """Parse the table; unknown or repeated columns, ragged rows, an empty table or no labels are a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels table not found: {path}")
    tried = ("\t",) if path.suffix.lower() == ".tsv" else DELIMITERS
    delimiter = tried[0]
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            delimiter = _detect_delimiter(handle.readline(), tried, path)
            handle.seek(0)  # the csv reader reads the header again, so a quoted header cell stays one cell
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            if not header or not any(cell.strip() for cell in header):
                raise DataError(f"labels table {path} is empty: expected a header row, then one row per image")
            header = [cell.strip() for cell in header]
            columns = _columns(header, path_col, label_col, tried, path)
            removed = _removed_column(header)
            rows = []
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue  # blank line
                _require_width(cells, len(header), reader.line_num, delimiter, path)
                if removed is not None and cells[removed].strip().lower() in REMOVED_VALUES:
                    continue  # taken out in review (`tlearn label --review`): the file stays, the row is not used
                rows.append(_parse_row(cells, reader.line_num, *columns, label_delim, path))
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"labels table {path} cannot be read as a {DELIMITER_NAMES[delimiter]}-separated table "
                        f"({error})") from None
    path_index, label_index, split_index, _ = columns
    if not rows:
        raise DataError(f"labels table {path} has a header but no rows")
    if not any(row.labels for row in rows):
        raise DataError(f"label column {header[label_index]!r} of {path} has no labels")
    split_col = header[split_index] if split_index is not None else None
    return Table(path, rows, header[path_index], header[label_index], split_col)


def _removed_column(header: list[str]) -> int | None:
    lowered = [name.lower() for name in header]
    return lowered.index("removed") if "removed" in lowered else None


def _detect_delimiter(first_line: str, tried: tuple[str, ...], path: Path) -> str:
    """The candidate that splits the header line into the most cells (at least 2; ties and a
    one-cell header go to the first candidate), logged when it is not the suffix's usual one."""
    counts = [len(next(csv.reader([first_line], delimiter=candidate), [])) for candidate in tried]
    best = max(range(len(tried)), key=lambda i: (counts[i], -i))
    delimiter = tried[best] if counts[best] >= 2 else tried[0]
    if delimiter != tried[0]:
        # Once per table and process at INFO: training reads the table for train and for val
        level = logging.DEBUG if (str(path), delimiter) in _announced else logging.INFO
        _announced.add((str(path), delimiter))
        logger.log(level, "%s: columns separated by %s (detected from the header)", path.name,
                   DELIMITER_NAMES[delimiter])
    return delimiter


def _columns(header: list[str], path_col: str | None, label_col: str | None, tried: tuple[str, ...],
             path: Path) -> tuple[int, int, int | None, dict[str, str]]:
    """(path, label, split column index, split values), each used column named once in the header."""
    # a one-cell header is most often a delimiter the detection does not know: say so, not just "no column"
    single = "" if len(header) > 1 else \
        f"; the header is a single column: none of {', '.join(DELIMITER_NAMES[d] for d in tried)} separates it"
    path_index = _find_column(header, path_col, PATH_COLUMNS, "path", "--path-col", path, single)
    label_index = _find_column(header, label_col, LABEL_COLUMNS, "label", "--label-col", path, single)
    split_index, split_values = _split_column(header)
    _require_unique(header, [path_index, label_index, split_index], path)
    return path_index, label_index, split_index, split_values


def _require_unique(header: list[str], used: list[int | None], path: Path) -> None:
    """A used column whose name (in any case) the header repeats: which one is meant is a guess."""
    lowered = [name.lower() for name in header]
    for index in used:
        if index is None:
            continue
        positions = [str(i + 1) for i, name in enumerate(lowered) if name == lowered[index]]
        if len(positions) > 1:
            raise DataError(f"column {header[index]!r} appears {len(positions)} times in the header of {path} "
                            f"(columns {', '.join(positions)}, matched in any case); rename all but one")


def _require_width(cells: list[str], width: int, line: int, delimiter: str, path: Path) -> None:
    """A row as wide as the header: a ragged row would put another cell in the label column."""
    if len(cells) == width:
        return
    why = f"quote a path or label that contains {DELIMITER_NAMES[delimiter]}" if len(cells) > width \
        else "a cell is missing"
    raise DataError(f"{path} row {line} has {len(cells)} cells where the header has {width} ({why})")


def _find_column(header: list[str], given: str | None, candidates: tuple[str, ...], what: str, flag: str,
                 path: Path, note: str = "") -> int:
    lowered = [name.lower() for name in header]
    wanted = (given,) if given else candidates
    for name in wanted:
        if name.lower() in lowered:
            return lowered.index(name.lower())
    columns = ", ".join(header)
    if given:
        raise DataError(f"{flag} {given!r} is not a column of {path}; its columns: {columns}{note}")
    raise DataError(f"no {what} column in {path} (looked for {', '.join(candidates)}; its columns: {columns}{note}); "
                    f"name it with {flag}")


def _split_column(header: list[str]) -> tuple[int | None, dict[str, str]]:
    lowered = [name.lower() for name in header]
    if "split" in lowered:
        return lowered.index("split"), SPLIT_VALUES
    if "is_valid" in lowered:
        return lowered.index("is_valid"), IS_VALID_VALUES
    return None, {}


def _parse_row(cells: list[str], line: int, path_index: int, label_index: int, split_index: int | None,
               split_values: dict[str, str], label_delim: str | None, table: Path) -> TableRow:
    def cell(index: int) -> str:
        return cells[index].strip()  # every row is as wide as the header (_require_width)

    split = None
    if split_index is not None:
        value = cell(split_index)
        split = split_values.get(value.lower())
        if split is None:
            raise DataError(f"{table} row {line}: {value!r} is not a split ({', '.join(split_values)})")
    return TableRow(line, cell(path_index), label_values(cell(label_index), label_delim), split)


class FileIndex:
    """Every file under a root, listed once: exact relative paths, and image files by stem."""

    def __init__(self, root: Path):
        self.root = root
        self.files: set[str] = set()
        self.by_stem: dict[str, list[str]] = {}  # relative path without its image extension
        self.by_name: dict[str, list[str]] = {}  # file name without its image extension
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            relative_dir = os.path.relpath(directory, root).replace(os.sep, "/")
            for name in names:
                relative = name if relative_dir == "." else f"{relative_dir}/{name}"
                self.files.add(relative)
                stem, suffix = posixpath.splitext(name)
                if suffix.lower() in IMAGE_SUFFIXES:
                    self.by_stem.setdefault(relative[:len(relative) - len(suffix)], []).append(relative)
                    self.by_name.setdefault(stem, []).append(relative)

    def resolve(self, cell: str) -> tuple[str, str | None]:
        """(path, None) for the file a path cell names, or (what was looked for, why not found)."""
        name = cell.replace("\\", "/")
        if not name:
            return str(self.root), "empty path"
        if os.path.isabs(name):
            return (name, None) if os.path.isfile(name) else (name, "not found")
        relative = posixpath.normpath(name)
        wanted = os.path.join(self.root, relative)
        if relative in self.files:
            return wanted, None
        has_suffix = posixpath.splitext(relative)[1].lower() in IMAGE_SUFFIXES
        found = [] if has_suffix else \
            self.by_stem.get(relative) or ([] if "/" in relative else self.by_name.get(relative, []))
        if len(found) == 1:
            return os.path.join(self.root, found[0]), None
        if found:
            return wanted, f"ambiguous id: {len(found)} image files with this stem ({', '.join(sorted(found)[:3])})"
        if os.path.isfile(wanted):  # through a link the scan did not follow
            return wanted, None
        return wanted, "not found" if has_suffix else "not found (no image file with this name or stem)"


@dataclass
class TableSplit:
    """One split of a table's rows, ready for `sources.Split`."""

    class_names: list[str]
    samples: FileSamples
    description: str
    skipped: list[tuple[str, str]]  # (path, "row N: reason")
    split_names: list[str]  # each sample's split: train | val | test


def table_split(data: DataConfig, split: str, seed: int) -> TableSplit:
    """The rows of one split (train, val, test or all), their files checked, classes sorted by name.

    Rows go to the split their split/is_valid cell says; without one (or with no val rows), val
    is carved from the training rows by `val_split`, stratified and seeded, as for folders. Only
    the split's own files are opened. Problems (no label, missing file, unreadable) are reported
    by the split the row belongs to; those of training and validation rows by train.
    """
    root = Path(data.source)
    spec = data.table
    multi = spec.multi_label
    table = read_table(spec.path, spec.path_col, spec.label_col, spec.label_delim)
    if split == "test" and not table.has_test:
        raise DataError(f"{table.path} has no test rows (a split column with test); use --split val or all")
    index = FileIndex(root)
    entries, problems, seen = [], [], {}
    for row in table.rows:
        path, reason = index.resolve(row.path) if row.labels or multi else (os.path.join(root, row.path), "no label")
        if reason is None and path in seen:
            reason = f"the same file as row {seen[path]}"
        if reason is None:
            seen[path] = row.row
            entries.append((row, path))
        else:
            problems.append((row, path, reason))
    assigned, carved = _assign_splits(table, [row for row, _ in entries], data.val_split, seed)
    pool = ("train", "val") if split in ("train", "val") else ("train", "val", "test") if split == "all" else (split,)
    names = sorted({label for row in table.rows if _row_split(row) in pool
                    for label in (row.labels if multi else row.labels[:1])})
    known = {name: i for i, name in enumerate(names)}
    chosen = [(row, path, where) for (row, path), where in zip(entries, assigned)
              if where == split or (split == "all" and where in pool)]
    reported = [(row, path, reason) for row, path, reason in problems
                if split != "val" and _row_split(row) in pool]
    skipped = [(path, f"row {row.row}: {reason}") for row, path, reason in reported]
    if data.strict_images and skipped:
        raise DataError(f"{skipped[0][1]}: {skipped[0][0]} (drop --strict-images to skip such rows)")
    kept = []
    for (row, path, where), reason in zip(chosen, unusable_reasons([path for _, path, _ in chosen])):
        if reason is None:
            kept.append((row, path, where))
        elif data.strict_images:
            raise DataError(f"row {row.row}: {reason}: {path} (drop --strict-images to skip such rows)")
        else:
            skipped.append((path, f"row {row.row}: {reason}"))
    labels = [multi_hot(row.labels, known) if multi else known[row.labels[0]] for row, _, _ in kept]
    samples = FileSamples([path for _, path, _ in kept], labels)
    if split == "train":
        _require_every_class(samples, names, table.path)
    held_out = f", {data.val_split:g} held out for val" if carved and split in pool else ""
    description = f"{table.path} under {root}{held_out}"
    return TableSplit(names, samples, description, skipped, [where for _, _, where in kept])


def _row_split(row: TableRow) -> str:
    """The split a row belongs to before val is carved: test rows are kept apart, the rest train."""
    return "test" if row.split == "test" else "train" if row.split is None else row.split


def _assign_splits(table: Table, rows: list[TableRow], val_split: float, seed: int) -> tuple[list[str], bool]:
    """Each row's split, and whether val was carved from the training rows."""
    assigned = [_row_split(row) for row in rows]
    if "val" in assigned:
        return assigned, False
    pool = [i for i, where in enumerate(assigned) if where == "train"]
    names = {name: i for i, name in enumerate(sorted({_stratum(rows[i]) for i in pool}))}
    _, val = stratified_split([names[_stratum(rows[i])] for i in pool], val_split, seed)
    for position in val:
        assigned[pool[position]] = "val"
    return assigned, True


def _stratum(row: TableRow) -> str:
    """What carving val stratifies by: the label (a multi-label row's first; "" for none)."""
    return row.labels[0] if row.labels else ""


def multi_hot(labels: tuple[str, ...], known: dict[str, int]) -> tuple[int, ...]:
    """A multi-label sample's label: 1 for each class in `labels`, 0 for the others, in class order."""
    present = {known[label] for label in labels if label in known}
    return tuple(int(i in present) for i in range(len(known)))


def _require_every_class(samples: FileSamples, class_names: list[str], table: Path) -> None:
    if samples.labels and isinstance(samples.labels[0], tuple):
        counts = Counter({i: n for i, n in enumerate(map(sum, zip(*samples.labels)))})
    else:
        counts = Counter(samples.labels)
    empty = [name for i, name in enumerate(class_names) if not counts[i]]
    if empty:
        raise DataError(f"label(s) with no usable training image in {table}: {', '.join(empty[:10])}")
