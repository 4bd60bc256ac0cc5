"""`tlearn predict --output F.csv` writes its rows as it goes: a crash or a kill leaves the rows done so
far in a valid CSV file, and `--resume` skips the files already in it.

Each batch's rows go out in one write of whole lines, flushed; a line cut short by a kill (the
only damage a kill can do) is dropped when the file is resumed. JSON output is one document, so it
is still written whole at the end.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..errors import UserError


class CsvStream:
    """Appends rows to a CSV file batch by batch; `done` holds the paths of the rows already there."""

    def __init__(self, path: str | Path, header: list[str], resume: bool = False):
        self.path, self.header, self.done = Path(path), header, set()
        if resume and self.path.is_file():
            self._reopen(header)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (open for the stream's life)
            self.write([header])

    def _reopen(self, header: list[str]) -> None:
        data = self.path.read_bytes()  # bytes: the offsets must be the file's (csv ends lines with \r\n)
        complete = data[:data.rfind(b"\n") + 1]  # a line a kill cut short is dropped
        rows = list(csv.reader(io.StringIO(complete.decode("utf-8"), newline="")))
        if not rows or rows[0] != header:
            raise UserError(f"--resume: {self.path} has other columns than this prediction writes "
                            "(another run, --top-k or threshold); choose another --output")
        self.done = {row[0] for row in rows[1:] if row}
        self.file = open(self.path, "r+", newline="", encoding="utf-8")  # noqa: SIM115 (as above)
        self.file.truncate(len(complete))
        self.file.seek(0, os.SEEK_END)

    def write(self, rows: list[list[str]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        self.file.write(buffer.getvalue())
        self.file.flush()

    def __enter__(self) -> CsvStream:
        return self

    def __exit__(self, *exception) -> None:
        self.file.close()
