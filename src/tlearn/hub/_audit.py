"""The findings of `tlearn audit` on the run's data, for the model card (`push --audit DIR`).

The audit folder's duplicates.csv and label_issues.csv are read as they are; an audit of other
data is refused: an absolute image path outside the run's data folder, or a class the run does
not have.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..errors import UserError

AUDIT_FILES = ("duplicates.csv", "label_issues.csv")
SHOWN_ISSUES = 5


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_audit(audit_dir: str | Path, data_source: str, class_names: list[str]) -> dict[str, Any]:
    """The audit's counts and first label issues; a one-line error when it is not an audit of this data."""
    audit_dir = Path(audit_dir)
    missing = [name for name in AUDIT_FILES if not (audit_dir / name).is_file()]
    if missing:
        raise UserError(f"--audit {audit_dir} is not a tlearn audit folder (no {missing[0]})")
    duplicates, issues = (_rows(audit_dir / name) for name in AUDIT_FILES)
    source = Path(data_source).resolve()
    paths = [row[key] for row in duplicates for key in ("path_a", "path_b")] + [row["path"] for row in issues]
    foreign = [path for path in paths if source.is_dir() and Path(path).is_absolute()
               and not Path(path).resolve().is_relative_to(source)]  # a built-in data set: no folder to check
    strangers = sorted({row[key] for row in issues for key in ("given", "suggested")} - set(class_names))
    if foreign or strangers:
        detail = f"{foreign[0]} is not under {source}" if foreign else f"classes {', '.join(strangers[:3])}"
        raise UserError(f"--audit {audit_dir} audited other data than the run ({detail})")
    return {"duplicates": len(duplicates), "exact": sum(row["kind"] == "exact" for row in duplicates),
            "cross_split": sum(row["cross_split"] == "true" for row in duplicates), "label_issues": len(issues),
            "first_issues": [(Path(row["path"]).name, row["given"], row["suggested"], row["score"])
                             for row in issues[:SHOWN_ISSUES]]}


def audit_section(findings: dict[str, Any] | None) -> str:
    if findings is None:
        return ""
    text = (f"## Data audit\n\n`tlearn audit` of this data found {findings['duplicates']} duplicate pairs "
            f"({findings['exact']} exact, {findings['cross_split']} across the training and validation split) and "
            f"{findings['label_issues']} images whose label looks wrong to a cross-validated probe.")
    if findings["first_issues"]:
        rows = "\n".join(f"| {name} | {given} | {suggested} | {score} |"
                         for name, given, suggested, score in findings["first_issues"])
        text += ("\n\nThe least likely labels:\n\n| image | given | suggested | probability of the given label |\n"
                 "| --- | --- | --- | --- |\n" + rows)
    return text
