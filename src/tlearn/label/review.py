"""Review mode: walk an audit's findings (label_issues.csv, most suspicious first, then the near-
and exact duplicates of duplicates.csv) and keep, relabel or remove each, writing to the labels table.

Nothing is deleted: a removal is `removed` = 1 on the image's row (train then leaves it out), and
every decision marks its rows `reviewed` = 1. What is left to review is so a pure function of the
audit and the table: a killed and restarted review resumes at the first finding not decided yet.
A likely label error is decided once its image is reviewed or removed; a duplicate pair once
either image is removed or both are reviewed.
"""
from __future__ import annotations

import csv
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError, UserError
from .answers import REMOVED, REVIEWED, AnswerTable, Rows
from .pool import scan_pool

LABEL_ISSUES, DUPLICATES = "label_issues.csv", "duplicates.csv"


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str  # label_issue | duplicate
    paths: tuple[str, ...]  # relative to the pool
    given: str = ""
    suggested: str = ""
    score: str = ""


class ReviewSession:
    def __init__(self, pool_root: str | Path, table: str | Path, audit_dir: str | Path, classes: list[str]):
        self.pool = scan_pool(pool_root)
        self.table = AnswerTable(table)
        self.findings = read_findings(Path(audit_dir), self.pool.root, set(self.pool.paths))
        rows = self.table.read()
        labels = {rows.label(row) for row in rows.rows if rows.label(row)}
        labels |= {name for finding in self.findings for name in (finding.given, finding.suggested) if name}
        if classes and labels - set(classes):
            raise UserError(f"--classes {','.join(classes)} does not list label(s) of {table} or the audit: "
                            f"{', '.join(sorted(labels - set(classes))[:5])}")
        self.classes = list(classes) or sorted(labels)
        self.lock = threading.Lock()
        self.undo_list: list[list[tuple[str, dict[str, str] | None]]] = []  # per decision, its rows as they were

    def decided(self, finding: Finding, rows: Rows) -> bool:
        found = [rows.find(path) for path in finding.paths]
        if any(row is not None and rows.is_removed(row) for row in found):
            return True
        reviewed = [row is not None and row.get(REVIEWED, "").strip() == "1" for row in found]
        return all(reviewed)

    def state(self) -> dict[str, Any]:
        rows = self.table.read()
        left = [finding for finding in self.findings if not self.decided(finding, rows)]
        with self.lock:
            undo = self.undo_list[-1][0][0] if self.undo_list else None
        item = left[0] if left else None
        return {"mode": "review", "item": item and {**item.__dict__, "paths": list(item.paths)},
                "classes": list(self.classes), "items": len(self.findings),
                "reviewed": len(self.findings) - len(left), "answered": len(rows.rows),
                "estimate": None, "curve": [], "refitting": False, "undo": undo}

    def review(self, key: str, action: str, label: str = "") -> None:
        """Decide the finding `key`: keep, relabel (to `label`), remove (a label issue's image),
        remove_a or remove_b (one image of a duplicate pair)."""
        finding = next((finding for finding in self.findings if finding.key == key), None)
        if finding is None:
            raise DataError(f"{key!r} is not a finding of the audit")
        changes = self._changes(finding, action, label)
        with self.lock:
            self.undo_list.append([(path, self.table.set(path, values)) for path, values in changes])

    def _changes(self, finding: Finding, action: str, label: str) -> list[tuple[str, dict[str, str]]]:
        rows = self.table.read()

        def values(path: str, **extra: str) -> dict[str, str]:
            row = rows.find(path)
            given = finding.given if finding.kind == "label_issue" else ""
            kept = {"label": given} if row is None else {}  # an image the table did not list keeps the audit's label
            return {**kept, REVIEWED: "1", **extra}

        first = finding.paths[0]
        if action == "keep":
            return [(path, values(path)) for path in finding.paths]
        if action == "relabel" and finding.kind == "label_issue":
            if label not in self.classes:
                raise DataError(f"{label!r} is not a class")
            return [(first, values(first, label=label))]
        if action == "remove" and finding.kind == "label_issue":
            return [(first, values(first, **{REMOVED: "1"}))]
        if action in ("remove_a", "remove_b") and finding.kind == "duplicate":
            path = finding.paths[action == "remove_b"]
            return [(path, values(path, **{REMOVED: "1"}))]
        raise DataError(f"{action!r} is not a decision for a {finding.kind.replace('_', ' ')}")

    def undo(self) -> str | None:
        with self.lock:
            if not self.undo_list:
                return None
            decision = self.undo_list.pop()
            for path, before in reversed(decision):
                self.table.restore(path, before)
        return decision[0][0]

    def answer(self, path: str, label: str) -> None:
        raise DataError("review mode decides findings (POST /api/review), not answers")

    def add_class(self, name: str) -> None:
        raise DataError("review mode relabels to the classes the table and the audit know")


def read_findings(audit_dir: Path, pool_root: Path, pool_paths: set[str]) -> list[Finding]:
    """The audit's likely label errors (its order: most suspicious first), then its duplicate pairs."""
    findings = []
    for row in _rows(audit_dir / LABEL_ISSUES):
        path = _in_pool(row["path"], pool_root, pool_paths, audit_dir)
        findings.append(Finding(f"issue:{path}", "label_issue", (path,), row["given"], row["suggested"], row["score"]))
    for row in _rows(audit_dir / DUPLICATES):
        pair = tuple(_in_pool(row[name], pool_root, pool_paths, audit_dir) for name in ("path_a", "path_b"))
        findings.append(Finding(f"duplicate:{pair[0]}|{pair[1]}", "duplicate", pair, score=row["similarity"]))
    return findings


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _in_pool(audited: str, pool_root: Path, pool_paths: set[str], audit_dir: Path) -> str:
    """The audit's path (as the audit's data root joined it) relative to the pool."""
    relative = os.path.relpath(os.path.abspath(audited), os.path.abspath(pool_root)).replace(os.sep, "/")
    if relative not in pool_paths:
        raise DataError(f"{audit_dir} names {audited}, which is not an image of the pool {pool_root} "
                        "(give --pool the data root the audit read)")
    return relative
