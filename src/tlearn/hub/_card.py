"""The model card (the Hub folder's README.md): what the run's own files say, and nothing else.

Every figure comes from summary.json, calibration.json, model.json and config.yaml of the run
folder: the data (classes, counts, skipped files), the recipe, the validation metrics with
per-class scores, the calibration (ECE before and after, the temperature, the coverage table's
key rows), the teacher of a distilled run, the findings of an audit of the same data when one is
given, and how to load the model with tlearn, timm and
onnxruntime. The YAML header is the Hub's metadata (library, tags, datasets, model-index).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from ..config import BUILTIN_DATASETS
from ..files import read_json
from ..metrics import threshold_for_coverage
from ._audit import audit_section

KEY_COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.5)  # the coverage table's rows the card shows


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run's files the card is written from."""
    raw_config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    calibration = run_dir / "calibration.json"
    return {"summary": read_json(run_dir / "summary.json"), "model": read_json(run_dir / "model.json"),
            "config": raw_config, "calibration": read_json(calibration) if calibration.is_file() else None}


def data_name(config: dict[str, Any]) -> str:
    """The data set's name as the card shows it: a built-in's name, else the folder's own name (never a
    local path)."""
    source = str(config["data"]["source"])
    return source if source in BUILTIN_DATASETS else Path(source).name


def model_card(run_dir: Path, repo_id: str, has_onnx: bool = False, audit: dict[str, Any] | None = None) -> str:
    """The card's text; `audit`: the findings of an audit of the run's data (_audit.read_audit)."""
    run = read_run(Path(run_dir))
    sections = [_front_matter(run, repo_id), _headline(run, repo_id), _data_section(run), audit_section(audit),
                _recipe_section(run),
                _metrics_section(run), _calibration_section(run), _distillation_section(run),
                _limitations_section(run), _usage_section(run, repo_id, has_onnx)]
    return "\n\n".join(section for section in sections if section) + "\n"


def _front_matter(run: dict[str, Any], repo_id: str) -> str:
    summary, name = run["summary"], data_name(run["config"])
    metrics = [{"type": "accuracy", "name": "Top-1 accuracy (validation)", "value": summary["val_top1"]},
               {"type": "balanced_accuracy", "name": "Balanced accuracy (validation)",
                "value": summary["val_balanced_acc"]},
               {"type": "f1", "name": "Macro-F1 (validation)", "value": summary["val_f1_macro"]}]
    if "val_ece" in summary:
        metrics.append({"type": "ece", "name": "Expected calibration error (validation)", "value": summary["val_ece"]})
    meta = {"library_name": "timm", "pipeline_tag": "image-classification",
            "tags": ["image-classification", "timm", "tlearn", "transfer-learning"]
            + (["knowledge-distillation"] if "distillation" in summary else []),
            "metrics": ["accuracy", "f1"],
            "model-index": [{"name": repo_id.split("/")[-1], "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": name, "type": name, "split": "validation"}, "metrics": metrics}]}]}
    if name in BUILTIN_DATASETS:
        meta["datasets"] = [name]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---"


def _headline(run: dict[str, Any], repo_id: str) -> str:
    summary = run["summary"]
    return (f"# {repo_id.split('/')[-1]}\n\nAn image classifier for {summary['num_classes']} classes, "
            f"{summary['model']} trained with tlearn ({summary['strategy']}) on "
            f"`{data_name(run['config'])}`: validation top-1 **{summary['val_top1']:.4f}** on "
            f"{summary['num_val']} images ({_interval(summary['val_top1'], summary['num_val'])}).")


def _interval(accuracy: float, count: int) -> str:
    """The Wilson 95% interval of an accuracy measured on `count` images: how much the figure can move."""
    if count <= 0:
        return "no validation images"
    z = 1.96
    centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return f"95% interval {max(0.0, centre - half):.4f} to {min(1.0, centre + half):.4f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _data_section(run: dict[str, Any]) -> str:
    summary, data = run["summary"], run["config"]["data"]
    counts = summary.get("train_class_counts") or [""] * summary["num_classes"]
    rows = [[name, count] for name, count in zip(summary["class_names"], counts)]
    carved = "held out for val" in str(run["config"].get("resolved", {}).get("data", ""))  # else a val/ folder
    split = (f"{data['val_split']:g} of the images held out for validation, stratified" if carved
             else "the data's own validation split")
    skipped = summary.get("skipped_files", 0)
    text = (f"## Data\n\n`{data_name(run['config'])}`: {summary['num_train']} training and {summary['num_val']} "
            f"validation images in {summary['num_classes']} classes ({split}); {skipped} files skipped as "
            f"unreadable{' (listed in the run folder' + chr(39) + 's skipped_files.txt)' if skipped else ''}. "
            f"Training images per class (imbalance ratio {summary.get('train_imbalance_ratio', 1.0):g}):\n\n")
    unlabeled = summary.get("distillation", {}).get("num_unlabeled", 0)
    note = f"\n\nThe teacher also labelled {unlabeled} unlabeled images softly." if unlabeled else ""
    return text + _table(["class", "training images"], rows) + note


def _recipe_section(run: dict[str, Any]) -> str:
    config, summary = run["config"], run["summary"]
    train, data, resolved = config["train"], config["data"], config.get("resolved", {})
    prep = run["model"]["preprocessing"]
    rows = [["backbone", f"{summary['model']} (weights: {summary['weights']})"],
            ["strategy", f"{train['strategy']}: {train['head_epochs']} head epochs, {train['epochs']} epochs"],
            ["optimizer", f"{train['optimizer']}, LR {resolved.get('lr', train['lr'])}, weight decay "
                          f"{resolved.get('weight_decay', train['weight_decay'])}, backbone LR x "
                          f"{train['backbone_lr_mult']:g}"],
            ["input", f"{prep['crop_size']} px (resize {prep['resize_size']}, {prep['interpolation']}), mean "
                      f"{list(prep['mean'])}, std {list(prep['std'])}"],
            ["augmentation", f"{data['augment']}, mixup {data['mixup']:g}, cutmix {data['cutmix']:g}, random erasing "
                             f"{data['random_erasing']:g}, label smoothing {train['label_smoothing']:g}"],
            ["batch size", data["batch_size"]], ["balance", summary.get("balance", train["balance"])],
            ["EMA decay", train["ema_decay"] or "none"], ["seed", train["seed"]],
            ["training time", f"{summary['train_seconds']:.1f} s on {resolved.get('device', train['device'])}"],
            ["best epoch", f"{summary['best_epoch']} of {summary['epochs_completed']}"]]
    return "## Training recipe\n\n" + _table(["setting", "value"], rows)


def _metrics_section(run: dict[str, Any]) -> str:
    summary = run["summary"]
    rows = [["top-1", f"{summary['val_top1']:.4f}"], ["top-5", f"{summary['val_top5']:.4f}"],
            ["balanced accuracy", f"{summary['val_balanced_acc']:.4f}"], ["macro-F1", f"{summary['val_f1_macro']:.4f}"]]
    text = f"## Validation metrics\n\nThe best epoch's model on {summary['num_val']} validation images:\n\n"
    text += _table(["metric", "value"], rows)
    per_class = summary.get("val_per_class")
    if per_class:
        class_rows = [[name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", row["support"]]
                      for name, row in per_class.items()]
        text += "\n\nPer class:\n\n" + _table(["class", "precision", "recall", "F1", "images"], class_rows)
    return text


def _calibration_section(run: dict[str, Any]) -> str:
    record, summary = run["calibration"], run["summary"]
    if not record:
        return ""
    text = (f"## Calibration\n\nProbabilities are softmax(logits / T) with T = {record['temperature']:g} "
            f"({record['decision']}{': ' + record['reason'] if record.get('reason') else ''}). Expected "
            f"calibration error on validation: {record['ece_uncalibrated']:.4f} before, {record['ece']:.4f} after "
            f"({record['num_bins']} bins, out-of-fold when T was fitted).")
    table = record.get("coverage_thresholds") or []
    if table:
        rows = [[f"{coverage:.0%}", f"{threshold_for_coverage(table, coverage):.4f}"] for coverage in KEY_COVERAGES]
        text += ("\n\nConfidence threshold that answers a share of the validation images (the rest answered "
                 "'unknown'):\n\n" + _table(["answered", "min confidence"], rows))
    if summary.get("min_confidence") is not None:
        text += (f"\n\nThis model answers 'unknown' below {summary['min_confidence']:.4f} "
                 f"(trained with --coverage {summary['coverage']:g}).")
    return text


def _distillation_section(run: dict[str, Any]) -> str:
    figures = run["summary"].get("distillation")
    if not figures:
        return ""
    rows = [["model", figures["teacher_model"], run["summary"]["model"]],
            ["input", f"{figures['teacher_input_size']} px", f"{figures['student_input_size']} px"],
            ["validation top-1", f"{figures['teacher_val_top1']:.4f}", f"{run['summary']['val_top1']:.4f}"],
            [f"latency per image ({figures['latency_device']}, batch 1)", f"{figures['teacher_latency_ms']:.2f} ms",
             f"{figures['student_latency_ms']:.2f} ms"]]
    return (f"## Distillation\n\nDistilled from the teacher {figures['teacher_model']} (KL at temperature "
            f"{figures['temperature']:g} x {figures['distill_weight']:g}, labels x {figures['label_weight']:g}):\n\n"
            + _table(["", "teacher", "this model"], rows))


def _limitations_section(run: dict[str, Any]) -> str:
    summary = run["summary"]
    names = ", ".join(summary["class_names"][:20]) + (" ..." if summary["num_classes"] > 20 else "")
    worst = ""
    per_class = summary.get("val_per_class")
    if per_class:
        name, row = min(per_class.items(), key=lambda item: item[1]["recall"])
        worst = f" Its weakest class on validation is {name} (recall {row['recall']:.4f})."
    return ("## Intended use and limitations\n\nClassifies an image into exactly one of: " + names + ". It "
            "has no 'none of these' class: an image of something else still gets one of them, which the confidence "
            "threshold above can turn into 'unknown'. The figures come from "
            f"{summary['num_val']} validation images drawn from the same source as the training images; images "
            "from another camera, place or time can score lower." + worst)


def _usage_section(run: dict[str, Any], repo_id: str, has_onnx: bool) -> str:
    prep = run["model"]["preprocessing"]
    text = ("## How to use\n\nWith tlearn (preprocessing, class names, temperature and threshold included):\n\n"
            f"```python\nimport tlearn\n\nmodel = tlearn.load(\"hf-hub:{repo_id}\")\n"
            "print(model.predict(\"photo.jpg\"))\n```\n\n"
            f"```bash\ntlearn predict hf-hub:{repo_id} photo.jpg\n```\n\n"
            "With timm alone (the classes are in config.json's label_names):\n\n```python\n"
            f"import timm, torch\nfrom PIL import Image\n\nmodel = timm.create_model(\"hf-hub:{repo_id}\", "
            "pretrained=True).eval()\nconfig = timm.data.resolve_data_config({}, model=model)\ntransform = "
            "timm.data.create_transform(**config)\nimage = transform(Image.open(\"photo.jpg\").convert(\"RGB\"))\n"
            "print(model.pretrained_cfg[\"label_names\"][model(image.unsqueeze(0)).argmax().item()])\n```")
    if has_onnx:
        text += ("\n\nWith onnxruntime (`model.onnx`; resize the image to "
                 f"{prep['resize_size']} px on its short side, centre-crop {prep['crop_size']} px, scale to 0..1 and "
                 f"normalise with mean {list(prep['mean'])} and std {list(prep['std'])}):\n\n```python\n"
                 "import numpy as np, onnxruntime\n\nsession = onnxruntime.InferenceSession(\"model.onnx\")\n"
                 "logits = session.run(None, {session.get_inputs()[0].name: batch.astype(np.float32)})[0]\n```")
    return text
