"""The labels table the labelling page writes: one row per answered image, in answer order.

Every change is a read-modify-write of the whole table under an exclusive `flock` on a lock file
beside it (`.labels.csv.lock`), then an atomic replace (temporary file, fsync, rename): two tabs,
or two servers on one table, never lose each other's answers, and a kill at any moment leaves the
previous table or the new one, never half a file. The kernel drops the lock with its process, so a
killed server leaves no stale lock.

The format is what `tlearn train --labels` reads: a `path` and a `label` column (paths relative to
the pool); every other column there (`split`, the user's own) is kept as it was, and a new row's
split is train. A skipped image is
a row with an empty label (suggest and the page do not ask again); a removed one has `removed` = 1
(train drops it; the file stays). Review mode marks what it has walked with `reviewed` = 1.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data import LABEL_COLUMNS, PATH_COLUMNS
from ..errors import DataError
from ..files import atomic_write

REMOVED, REVIEWED = "removed", "reviewed"
NEW_ROW_CELLS = {"split": "train", "is_valid": "false"}  # train refuses an empty split cell: a new answer trains
DELIMITERS = (",", ";", "\t", "|")


@dataclass
class Rows:
    """The table in memory: its header, its rows (dicts by header name), and which columns hold
    the path and the label."""

    header: list[str]
    rows: list[dict[str, str]]
    path_col: str
    label_col: str
    delimiter: str = ","

    def find(self, path: str) -> dict[str, str] | None:
        return next((row for row in self.rows if _same(row[self.path_col], path)), None)

    def answered(self) -> list[str]:
        """The paths of the rows, in table order (the order answers were given)."""
        return [row[self.path_col].strip() for row in self.rows]

    def label(self, row: dict[str, str]) -> str:
        return row[self.label_col].strip()

    def is_removed(self, row: dict[str, str]) -> bool:
        return row.get(REMOVED, "").strip().lower() in ("1", "true", "yes")


def _same(cell: str, path: str) -> bool:
    return os.path.normpath(cell.strip().replace("\\", "/")) == os.path.normpath(path)


class AnswerTable:
    """The labels table on disk; every method that changes it holds the lock for its whole
    read-modify-write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    def read(self) -> Rows:
        if not self.path.exists():
            return Rows(["path", "label"], [], "path", "label")
        return parse(self.path.read_text(encoding="utf-8-sig"), self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # --labels new/labels.csv: its folder on first answer
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the other writer: a table write takes milliseconds
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def set(self, path: str, values: dict[str, str]) -> dict[str, str] | None:
        """Set `values` (by column: "label", REMOVED, REVIEWED) on `path`'s row, appended when it
        has none; returns the row as it was before (None: there was none), for undo."""
        with self.locked():
            table = self.read()
            row = table.find(path)
            before = dict(row) if row is not None else None
            if row is None:
                row = {name: NEW_ROW_CELLS.get(name.lower(), "") for name in table.header}
                row[table.path_col] = path
                table.rows.append(row)
            for column, value in values.items():
                name = table.label_col if column == "label" else column
                if name not in table.header:
                    table.header.append(name)
                    for other in table.rows:
                        other.setdefault(name, "")
                row[name] = value
            self._write(table)
        return before

    def restore(self, path: str, before: dict[str, str] | None) -> None:
        """Put `path`'s row back as `set` found it: removed again when there was none."""
        with self.locked():
            table = self.read()
            row = table.find(path)
            if before is None:
                table.rows = [other for other in table.rows if other is not row]
            elif row is not None:
                row.clear()
                row.update({name: before.get(name, "") for name in table.header})
            else:
                table.rows.append({name: before.get(name, "") for name in table.header})
            self._write(table)

    def _write(self, table: Rows) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=table.delimiter, lineterminator="\n")
        writer.writerow(table.header)
        writer.writerows([row.get(name, "") for name in table.header] for row in table.rows)
        atomic_write(self.path, buffer.getvalue())


def parse(text: str, path: Path) -> Rows:
    """A table's text as Rows (delimiter from its header, as train reads it); no path or label
    column is a one-line DataError."""
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        return Rows(["path", "label"], [], "path", "label")
    counts = [len(next(csv.reader([lines[0]], delimiter=d))) for d in DELIMITERS]
    delimiter = DELIMITERS[max(range(len(DELIMITERS)), key=lambda i: (counts[i], -i))]
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [cell.strip() for cell in next(reader)]
    lowered = [name.lower() for name in header]
    path_col = next((header[lowered.index(n)] for n in PATH_COLUMNS if n in lowered), None)
    label_col = next((header[lowered.index(n)] for n in LABEL_COLUMNS if n in lowered), None)
    rest = list(reader)
    if (path_col is None or label_col is None) and not any(any(cell.strip() for cell in cells) for cells in rest):
        # a header alone: nothing answered yet; the missing column is added
        path_col, label_col = path_col or "path", label_col or "label"
        header += [name for name in (path_col, label_col) if name not in header]
    if path_col is None or label_col is None:
        raise DataError(f"labels table {path} needs a path and a label column; its columns: {', '.join(header)}")
    rows = []
    for number, cells in enumerate(rest, start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise DataError(f"{path} row {number} has {len(cells)} cells where the header has {len(header)}")
        rows.append(dict(zip(header, cells)))
    return Rows(header, rows, path_col, label_col, delimiter)
