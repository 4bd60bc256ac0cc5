"""How well `tlearn audit` finds what benchmarks/make_audit_set.py planted.

Duplicates: recall per planted kind (exact must be found as exact; the others as any pair),
recall of the cross-split flag, precision of the reported pairs (a pair is right when both
images belong to one planted group: an original and its copy). Label issues: precision and
recall among the top k = 2x the planted flips, and average precision over the ranking.

    python benchmarks/make_audit_set.py --seed 2 --out data/audit-seed2
    python benchmarks/audit_quality.py data/audit-seed2
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from common import ROOT


def relative(path: str, root: Path) -> str:
    return str(Path(path).resolve().relative_to(root.resolve()))


def duplicate_scores(rows: list[dict], truth: dict, root: Path) -> dict:
    group = {}
    for number, pair in enumerate(truth["pairs"]):
        group[pair["a"]] = group[pair["b"]] = number
    found = {frozenset((relative(r["path_a"], root), relative(r["path_b"], root))): r for r in rows}
    recall, cross = Counter(), Counter()
    for pair in truth["pairs"]:
        row = found.get(frozenset((pair["a"], pair["b"])))
        recall[pair["kind"]] += row is not None and (pair["kind"] != "exact" or row["kind"] == "exact")
        if pair["cross_split"]:
            cross["planted"] += 1
            cross["flagged"] += row is not None and row["cross_split"] == "true"
    kinds = Counter(pair["kind"] for pair in truth["pairs"])
    right = sum(1 for key in found if len({group.get(path, -1 - i) for i, path in enumerate(key)}) == 1)
    by_kind = Counter(r["kind"] for r in rows)
    return {"recall": {kind: round(recall[kind] / kinds[kind], 3) for kind in kinds},
            "planted_per_kind": dict(kinds),
            "cross_split_recall": round(cross["flagged"] / max(cross["planted"], 1), 3),
            "reported": dict(by_kind), "precision": round(right / max(len(found), 1), 3),
            "unplanted_pairs": [sorted(key) for key in found
                                if len({group.get(path, -1 - i) for i, path in enumerate(key)}) != 1][:10]}


def label_scores(rows: list[dict], truth: dict, root: Path) -> dict:
    flipped = {flip["path"] for flip in truth["flips"]}
    ranked = [relative(r["path"], root) in flipped for r in rows]
    k = 2 * len(flipped)
    hits, precisions = 0, []
    for position, hit in enumerate(ranked, 1):
        if hit:
            hits += 1
            precisions.append(hits / position)
    top = sum(ranked[:k])
    return {"planted": len(flipped), "k": k, "precision_at_k": round(top / k, 3),
            "recall_at_k": round(top / len(flipped), 3),
            "average_precision": round(sum(precisions) / len(flipped), 3), "flagged": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--model", default="efficientnet_lite0")
    args = parser.parse_args()
    out = args.out or ROOT / "runs" / f"audit-{args.data.name}"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlearn", "audit", "--data", str(args.data), "--out", str(out),
                    "--model", args.model, "-q"], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - began
    truth = json.loads((args.data / "truth.json").read_text())
    with open(out / "duplicates.csv", newline="") as handle:
        duplicates = list(csv.DictReader(handle))
    with open(out / "label_issues.csv", newline="") as handle:
        issues = list(csv.DictReader(handle))
    print(json.dumps({"data": str(args.data), "images": truth["images"], "seconds": round(seconds, 1),
                      "duplicates": duplicate_scores(duplicates, truth, args.data),
                      "label_issues": label_scores(issues, truth, args.data)}, indent=1))


if __name__ == "__main__":
    main()
