"""The run folder's text files: config.yaml, metrics.csv, summary.json, skipped_files.txt."""
from __future__ import annotations

import csv
import io
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..config import RunConfig
from ..errors import RunFolderError, first_line
from ..files import atomic_write, read_json, write_json

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
SKIPPED_FILE = "skipped_files.txt"
METRIC_COLUMNS = ["stage", "stage_epoch", "epoch", "train_loss", "train_top1", "val_loss", "val_top1",
                  "val_top5", "val_balanced_acc", "val_f1_macro", "lr_head", "lr_backbone", "seconds",
                  "images_per_s", "cached_features",
                  "data_seconds", "compute_seconds", "optimizer_seconds", "eval_seconds",
                  # multi-label runs (their top-1 columns stay empty): micro F1 at 0.5, mAP, micro F1
                  "train_f1_micro", "val_map", "val_f1_micro",
                  "trainable_params"]  # --unfreeze gradual: it rises epoch by epoch


def default_run_dir(reserve: bool = True) -> Path:
    """runs/<timestamp>, made here (`reserve`) so that two runs started in the same second get two
    folders (the second gets a -2 suffix): mkdir is atomic, a name taken is never reused. Under
    torchrun only rank 0 reserves; the others only write nothing there."""
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    if not reserve:
        return base
    base.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 1000):
        candidate = base if number == 1 else base.with_name(f"{base.name}-{number}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunFolderError(f"no free run folder name beside {base}: pass --out")


def versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    return {"tlearn": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "timm": str(timm.__version__)}


def write_config(run_dir: Path, config: RunConfig, resolved: dict[str, Any]) -> None:
    data = config.to_dict()
    data["resolved"] = resolved
    data["versions"] = versions()
    atomic_write(run_dir / CONFIG_FILE, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def update_resolved(run_dir: Path, **values: Any) -> None:
    """Add to config.yaml's resolved section what a run decides after it started (--lr find's LR)."""
    data = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    data.setdefault("resolved", {}).update(values)
    atomic_write(run_dir / CONFIG_FILE, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunFolderError(f"{path} not found: not a tlearn run folder")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RunFolderError(f"{path} is damaged ({first_line(error)})") from None
    raw.pop("resolved", None)
    raw.pop("versions", None)
    return RunConfig.from_dict(raw)


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(run_dir / METRICS_FILE, buffer.getvalue())


def write_skipped(run_dir: Path, skipped: list[tuple[str, str]]) -> None:
    lines = [f"{path}\t{reason}" for path, reason in skipped]
    atomic_write(run_dir / SKIPPED_FILE, "".join(line + "\n" for line in lines))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    write_json(run_dir / SUMMARY_FILE, summary)


def read_summary(run_dir: Path) -> dict[str, Any]:
    return read_json(run_dir / SUMMARY_FILE)
