"""`tlearn predict --output F.csv|F.json` writes its rows as it goes: a crash or a kill leaves the rows
done so far in a valid file, and `--resume` skips the files already in it.

CSV: each batch's rows go out in one write of whole lines, flushed; a line cut short by a kill is
dropped when the file is resumed. JSON: the file is a whole document after every batch. A batch's
records go in one `pwrite` at the end of the rows, with the document's closing text (and the
unreadable files so far) after them; the document only grows, so the write never leaves old text
behind, and a kill lands before or after it. Should a kill ever cut one short (a fatal signal can
stop a write of many pages between two pages), the resume keeps the records that parse whole.
The JSON text is exactly `json.dumps(document, indent=2, ensure_ascii=False)` (no newline at the
end), the text `write_predictions` writes whole, so the streamed file and a merged one are equal.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write

_HEAD = '{\n  "predictions": ['  # the document's text before its first record


class CsvStream:
    """Appends rows (lists of cells, the path first) to a CSV file batch by batch; `done` holds the
    paths of the rows already there. Unreadable files have no row: a resume tries them again."""

    def __init__(self, path: str | Path, header: list[str], resume: bool = False):
        self.path, self.header, self.done = Path(path), header, set()
        if resume and self.path.is_file():
            self._reopen(header)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 (open for the stream's life)
            self.write([header])

    def _reopen(self, header: list[str]) -> None:
        complete, rows = _checked_csv(self.path, header)
        self.done = {row[0] for row in rows[1:] if row}
        self.file = open(self.path, "r+", newline="", encoding="utf-8")  # noqa: SIM115 (as above)
        self.file.truncate(complete)
        self.file.seek(0, os.SEEK_END)

    def write(self, rows: list[list[str]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        self.file.write(buffer.getvalue())
        self.file.flush()

    def add(self, records: list[list[str]], unreadable: list[tuple[str, str]]) -> None:
        if records:
            self.write(records)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> CsvStream:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


class JsonStream:
    """Appends records (dicts, "path" first) and unreadable files to a JSON document batch by batch,
    the file a valid document after each; `done` holds the paths already there (rows and unreadable
    files: the JSON lists both). `fits(record)`: whether a record of a resumed file has the shape
    this prediction writes."""

    def __init__(self, path: str | Path, fits: Callable[[dict], bool], resume: bool = False):
        self.path, self.records, self.unreadable = Path(path), 0, []  # records: how many the file holds
        records: list[dict] = []
        if resume and self.path.is_file():
            records, self.unreadable = _checked_json(self.path, fits)
        self.done = {record["path"] for record in records} | {item["path"] for item in self.unreadable}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = self._rows(records)
        atomic_write(self.path, _HEAD.encode() + rows + self._tail())  # a resumed file: back in its exact form
        self.end = len(_HEAD.encode()) + len(rows)  # the offset right after the last record: the next one goes there
        self.fd = os.open(self.path, os.O_RDWR)

    def add(self, records: list[dict], unreadable: list[tuple[str, str]]) -> None:
        if not (records or unreadable):
            return
        self.unreadable += [{"path": path, "reason": reason} for path, reason in unreadable]
        rows = self._rows(records)
        data, offset = rows + self._tail(), self.end
        while data:  # one pwrite: a regular file takes it whole
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written
        self.end += len(rows)

    def _rows(self, records: list[dict]) -> bytes:
        """The records' text, each after a comma if a record comes before it."""
        text = "".join(("," if self.records or index else "") + "\n" + _indented(record, "    ")
                       for index, record in enumerate(records))
        self.records += len(records)
        return text.encode()

    def _tail(self) -> bytes:
        """The document's text after the last record: the array's end, then the unreadable files."""
        return ((("\n  ]" if self.records else "]") + ',\n  "unreadable": '
                 + json.dumps(self.unreadable, indent=2, ensure_ascii=False).replace("\n", "\n  ") + "\n}").encode())

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> JsonStream:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


def _indented(record: dict, prefix: str) -> str:
    return prefix + json.dumps(record, indent=2, ensure_ascii=False).replace("\n", "\n" + prefix)


@dataclass(frozen=True)
class Layout:
    """A prediction file's form: `.csv` rows under `header`, or `.json` records that `fits`;
    `record(row)`: a prediction row (prediction.py) as the file's row or record."""
    suffix: str
    header: list[str]
    fits: Callable[[dict], bool]
    record: Callable[[dict], list[str] | dict]

    def stream(self, path: str | Path, resume: bool = False) -> CsvStream | JsonStream:
        if self.suffix == ".json":
            return JsonStream(path, self.fits, resume)
        return CsvStream(path, self.header, resume)

    def done(self, path: str | Path) -> set[str]:
        """The paths a prediction file already holds (none when there is no file), checked as a resume does."""
        path = Path(path)
        if not path.is_file():
            return set()
        if self.suffix == ".json":
            records, unreadable = _checked_json(path, self.fits)
            return {record["path"] for record in records} | {item["path"] for item in unreadable}
        return {row[0] for row in _checked_csv(path, self.header)[1][1:] if row}


def _checked_csv(path: Path, header: list[str]) -> tuple[int, list[list[str]]]:
    complete, rows = read_csv_rows(path)
    if not rows or rows[0] != header:
        raise UserError(f"--resume: {path} has other columns than this prediction writes "
                        "(another run, --top-k or threshold); choose another --output")
    return complete, rows


def _checked_json(path: Path, fits: Callable[[dict], bool]) -> tuple[list[dict], list[dict]]:
    records, unreadable = read_json_document(path)
    if records and not fits(records[0]):
        raise UserError(f"--resume: {path} has other fields than this prediction writes "
                        "(another run, --top-k or threshold); choose another --output")
    return records, unreadable


def read_csv_rows(path: Path) -> tuple[int, list[list[str]]]:
    """(the length in bytes of the file's whole lines, their rows): a line a kill cut short is dropped."""
    data = path.read_bytes()  # bytes: the offsets must be the file's (csv ends lines with \r\n)
    complete = data[:data.rfind(b"\n") + 1]
    return len(complete), list(csv.reader(io.StringIO(complete.decode("utf-8"), newline="")))


def read_json_document(path: Path) -> tuple[list[dict], list[dict]]:
    """A streamed JSON file's (records, unreadable files); of a document a kill cut short, the
    records that parse whole (its unreadable files are tried again)."""
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
        return list(document["predictions"]), list(document["unreadable"])
    except (ValueError, KeyError, TypeError):
        if not text.startswith(_HEAD):
            raise UserError(f"--resume: {path} is not a prediction file tlearn wrote; choose another --output") \
                from None
    decoder, records, position = json.JSONDecoder(), [], len(_HEAD)
    while True:
        while position < len(text) and text[position] in ",\n ":
            position += 1
        try:
            record, position = decoder.raw_decode(text, position)
        except ValueError:
            return records, []
        if not isinstance(record, dict) or "path" not in record:
            return records, []
        records.append(record)
