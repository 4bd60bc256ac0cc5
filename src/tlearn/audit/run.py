"""`tlearn audit`: read a data set as training would, find duplicates, likely label errors,
class imbalance and odd images, and write duplicates.csv, label_issues.csv and audit.html."""
from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..data import resolve_split
from ..errors import DataError
from ..files import atomic_write
from ._duplicates import DuplicatePair, crosses_split, find_duplicates
from ._embedding import audit_features
from ._hashing import image_facts
from ._label_issues import LabelIssue, find_label_issues
from ._oddities import OddImage, class_balance, imbalance_ratio, odd_images
from ._page import write_audit_page

logger = logging.getLogger(__name__)

DUPLICATES_FILE, LABEL_ISSUES_FILE, PAGE_FILE = "duplicates.csv", "label_issues.csv", "audit.html"


@dataclass
class AuditResult:
    description: str
    paths: list[str]
    class_names: list[str]
    balance: dict[str, list[int]]  # split -> count per class
    duplicates: list[DuplicatePair]
    cross_split: list[bool]  # per pair
    label_issues: list[LabelIssue] | None  # None: skipped (label_note says why)
    label_note: str
    odd: list[OddImage]

    def imbalance(self, split: str) -> float:
        return imbalance_ratio(self.balance[split])

    def summary(self) -> dict[str, object]:
        kinds = [pair.kind for pair in self.duplicates]
        return {"images": len(self.paths), "classes": len(self.class_names),
                "splits": ", ".join(f"{split} {sum(counts)}" for split, counts in self.balance.items()),
                "imbalance ratio (largest / smallest class)": ", ".join(
                    f"{split} {self.imbalance(split):.2f}" for split in self.balance),
                "exact duplicate pairs": kinds.count("exact"), "near duplicate pairs": kinds.count("near"),
                "pairs across splits (leakage)": sum(self.cross_split),
                "likely label errors": self.label_note if self.label_issues is None else
                f"{len(self.label_issues)} labels the out-of-fold probe disagrees with (label_issues.csv, most "
                "suspicious first; the top of the list is what to check)",
                "odd images": len(self.odd)}


def run_audit(data: DataConfig, out: Path, *, model_name: str, weights: str = "default", device: str = "auto",
              batch_size: int = 64, cache_dir: Path | None = None, seed: int = 0) -> AuditResult:
    """Audit every image of `data` (all splits) and write the three files into `out`."""
    found = resolve_split(data, "all", seed)
    samples, names = found.samples, found.class_names
    if len(samples) < 2:
        raise DataError(f"the audit needs at least 2 images; {data.source} has {len(samples)}")
    paths = [samples.describe(i) for i in range(len(samples))]
    split_names = found.split_names or ["all"] * len(samples)
    facts = image_facts(samples)

    features = audit_features(samples, model_name, weights, device, batch_size, cache_dir)
    duplicates = find_duplicates(facts.content_hashes, facts.phash_bits, facts.crop_bits, features)
    multi_label = bool(samples.labels) and isinstance(samples.labels[0], tuple)
    if multi_label:
        issues, note = None, "skipped: multi-label data (the probe ranks single labels)"
        balance = {split: [0] * len(names) for split in dict.fromkeys(split_names)}
        for label, split in zip(samples.labels, split_names):
            balance[split] = [count + value for count, value in zip(balance[split], label)]
    elif max(Counter(samples.labels).values(), default=0) < 2:  # no class to hold out a fold of
        issues, note = None, "skipped: every class has a single image (the k-fold probe needs two)"
        balance = class_balance(samples.labels, split_names, names)
    else:
        issues, note = find_label_issues(features, samples.labels, len(names), seed), ""
        balance = class_balance(samples.labels, split_names, names)
    result = AuditResult(found.description, paths, names, balance, duplicates,
                         [crosses_split(pair, found.split_names) for pair in duplicates], issues, note,
                         odd_images(facts, paths, found.skipped))
    write_audit(result, out, samples.load)
    return result


def write_audit(result: AuditResult, out: Path, load_image) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [(result.paths[p.first], result.paths[p.second], f"{p.similarity:.4f}", p.kind, str(cross).lower())
            for p, cross in zip(result.duplicates, result.cross_split)]
    _write_csv(out / DUPLICATES_FILE, ("path_a", "path_b", "similarity", "kind", "cross_split"), rows)
    names = result.class_names
    rows = [(result.paths[i.index], names[i.given], names[i.suggested], f"{i.score:.4f}")
            for i in result.label_issues or []]
    _write_csv(out / LABEL_ISSUES_FILE, ("path", "given", "suggested", "score"), rows)

    write_audit_page(out / PAGE_FILE, result, load_image)


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


def summary_lines(result: AuditResult, out: Path) -> list[str]:
    """What the command prints: the summary, the first few findings, the files written."""
    lines = [f"audit of {result.description}"]
    lines += [f"  {key}: {value}" for key, value in result.summary().items()]
    for pair, cross in list(zip(result.duplicates, result.cross_split))[:5]:
        lines.append(f"  {pair.kind} duplicate{' (across splits)' if cross else ''}: "
                     f"{result.paths[pair.first]} = {result.paths[pair.second]}")
    for issue in (result.label_issues or [])[:5]:
        lines.append(f"  label {result.class_names[issue.given]!r}, suggested {result.class_names[issue.suggested]!r} "
                     f"({issue.score:.3f}): {result.paths[issue.index]}")
    lines.append(f"wrote {out / DUPLICATES_FILE}, {out / LABEL_ISSUES_FILE}, {out / PAGE_FILE}")
    return lines
