"""Multi-label data (--label-delim): parsing, metrics against scikit-learn, training both head kinds
through the command line, eval/predict/export, and exact resume.

The images encode their labels in colour: each of red, green and blue is bright when the image
carries that class and dark when not (an image with no labels is dark all over), so even the
tiny random-weight model separates them a little.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tlearn
from tlearn.config import DataConfig
from tlearn.data._tables import read_table, table_split
from tlearn.errors import ConfigError
from tlearn.metrics.multilabel import average_precision, best_f1_threshold, choose_thresholds, f1_scores, score
from tlearn.run_folder import checkpoint

from conftest import TINY_MODEL, kill_chain

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0"]
CHANNEL = {"red": 0, "green": 1, "blue": 2}
PATTERNS = [("red",), ("green",), ("blue",), ("red", "green"), ("green", "blue"), ("red", "blue"),
            ("red", "green", "blue"), ()]


def make_multilabel(root: Path, count: int = 40) -> Path:
    """root/img/N.png and root/labels.csv (file, labels space-separated, split); every 5th image is val."""
    rows = []
    for i in range(count):
        labels = PATTERNS[i % len(PATTERNS)]
        rng = np.random.default_rng(i)
        base = np.full((30, 40, 3), 30.0)
        for name in labels:
            base[..., CHANNEL[name]] = 210
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        path = root / "img" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(path)
        rows.append((f"img/{i}.png", " ".join(labels), "val" if i % 5 == 0 else "train"))
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "labels", "split"])
        writer.writerows(rows)
    return root


def test_delimiter_splits_cells_and_an_empty_cell_is_an_image_without_labels(tmp_path):
    root = make_multilabel(tmp_path / "data", count=16)
    table = read_table(root / "labels.csv", label_delim=" ")
    assert table.rows[3].labels == ("red", "green") and table.rows[7].labels == ()
    config = DataConfig(source=str(root), labels=str(root / "labels.csv"), label_delim=" ")
    train = table_split(config, "train", 0)
    assert train.class_names == ["blue", "green", "red"]
    assert len(train.samples) == 12 and not train.skipped  # the empty cell (row 8, img/7) is kept
    by_path = dict(zip(train.samples.paths, train.samples.labels))
    assert by_path[str(root / "img" / "3.png")] == (0, 1, 1) and by_path[str(root / "img" / "7.png")] == (0, 0, 0)
    assert by_path[str(root / "img" / "6.png")] == (1, 1, 1)
    # without the delimiter the cell is one label, and an empty cell is an unlabelled row (skipped)
    single = table_split(DataConfig(source=str(root), labels=str(root / "labels.csv")), "train", 0)
    assert "red green blue" in single.class_names and any("no label" in why for _, why in single.skipped)
    with pytest.raises(ConfigError, match="--label-delim"):
        DataConfig(source=str(root), label_delim=" ")


def test_average_precision_and_f1_match_scikit_learn():
    from sklearn.metrics import average_precision_score, f1_score

    probs = np.array([[0.9, 0.1, 0.4], [0.8, 0.7, 0.4], [0.3, 0.7, 0.2], [0.3, 0.2, 0.9], [0.6, 0.5, 0.1],
                      [0.1, 0.9, 0.6]])  # ties within classes 0, 1 and 2
    targets = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0], [0, 1, 1]])
    for c in range(3):
        assert average_precision(probs[:, c], targets[:, c]) == pytest.approx(
            average_precision_score(targets[:, c], probs[:, c]), abs=1e-12)
    assert np.isnan(average_precision(probs[:, 0], np.zeros(6)))
    predicted = (probs >= 0.5).astype(int)
    per_class, micro, macro = f1_scores(predicted, targets)
    assert micro == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert macro == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert per_class == pytest.approx(f1_score(targets, predicted, average=None))
    result = score(probs, targets, [0.5, 0.5, 0.5])
    assert result.map == pytest.approx(average_precision_score(targets, probs, average="macro"))
    assert result.f1_micro == pytest.approx(micro) and result.support == [3, 3, 3]


def test_threshold_is_the_best_f1_on_validation():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(50), 2)  # ties
    targets = (scores + rng.normal(0, 0.3, 50) > 0.6).astype(int)
    chosen = best_f1_threshold(scores, targets)
    def f1_at(t):
        return f1_scores((scores >= t)[:, None], targets[:, None])[1]
    assert f1_at(chosen) == pytest.approx(max(f1_at(t) for t in np.unique(scores)))
    assert best_f1_threshold(scores, np.zeros(50)) == 0.5  # no positives: the default
    assert choose_thresholds(np.stack([scores, scores], 1), np.stack([targets, 0 * targets], 1))[1] == 0.5


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_linear_probe_end_to_end_eval_predict_and_export(tmp_path, capsys):
    import onnxruntime as ort

    from tlearn import api
    from tlearn.cli import main

    root = make_multilabel(tmp_path / "data")
    run = tmp_path / "run"
    train = ["train", "--data", str(root), "--labels", str(root / "labels.csv"), "--label-delim", " ", *TINY]
    assert main([*train, "--balance", "reweight", "--out", str(tmp_path / "x")]) == 2
    assert "--balance reweight is for single-label data" in capsys.readouterr().err
    assert main([*train, "--strategy", "linear-probe", "--no-report", "--out", str(run)]) == 0
    summary = _summary(run)
    assert summary["task"] == "multi-label" and "val_top1" not in summary
    assert summary["stages"][0]["solver"] == "lbfgs" and 0.5 <= summary["val_map"] <= 1.0
    assert {"val_f1_micro", "val_f1_macro"} <= summary["stages"][0].keys()
    info = json.loads((run / "model.json").read_text())
    assert info["task"] == "multi-label" and len(info["thresholds"]) == 3 and info["label_delim"] == " "
    assert info["thresholds"] == summary["thresholds"]
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert float(row["val_map"]) == pytest.approx(summary["val_map"], abs=1e-5) and row["val_top1"] == ""

    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(root), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["map"] == pytest.approx(summary["val_map"], abs=1e-5)  # same images, same thresholds
    assert evaluated["f1_micro"] == pytest.approx(summary["val_f1_micro"], abs=1e-5)
    assert set(evaluated["per_class"]["red"]) == {"ap", "f1", "support", "threshold"}

    images = [str(root / "img" / f"{i}.png") for i in range(0, 40, 5)]
    assert main(["predict", str(run), *images, "--output", str(tmp_path / "p.csv")]) == 0
    predicted = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(predicted[0]) == ["path", "labels", "prob_blue", "prob_green", "prob_red"]
    thresholds = dict(zip(["blue", "green", "red"], info["thresholds"]))
    for line in predicted:
        above = [name for name in thresholds if float(line[f"prob_{name}"]) >= thresholds[name] - 1e-6]
        assert sorted(line["labels"].split(" ") if line["labels"] else []) == above

    assert main(["export", str(run), "--format", "onnx"]) == 0
    onnx_file = run / "export" / "model.onnx"
    sidecar = json.loads(Path(f"{onnx_file}.json").read_text())
    assert sidecar["task"] == "multi-label" and sidecar["thresholds"] == info["thresholds"]
    trained = api.load(run)
    batch = torch.stack([trained.prepare(path) for path in images]).numpy()
    logits = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
    probs = 1 / (1 + np.exp(-logits))
    from_onnx = [sorted(c for c, p, t in zip(sidecar["classes"], row, sidecar["thresholds"]) if p >= t)
                 for row in probs]
    assert from_onnx == [sorted(line["labels"].split(" ") if line["labels"] else []) for line in predicted]


def test_two_stage_with_fine_tuning_early_stopping_on_map_and_the_report(tmp_path):
    from tlearn.cli import main

    root = make_multilabel(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--labels", str(root / "labels.csv"), "--label-delim", " ", *TINY,
                 "--strategy", "two-stage", "--epochs", "3", "--patience", "1", "--monitor", "val_map",
                 "--lr", "1e-9", "--min-delta", "0.01", "--out", str(run)]) == 0
    stages = _summary(run)["stages"]
    assert [(s["name"], s["epochs"], s["stopped_early"]) for s in stages] == [
        ("linear-probe", 1, False), ("finetune", 2, True)]
    page = (run / "report.html").read_text()
    assert "mAP" in page and "Worst-scored images" in page and "average precision" in page
    assert "Grad-CAM for the highest-scored class" in page and page.index("id='samples'") < page.index("<details")
    assert main(["train", "--data", str(root), "--labels", str(root / "labels.csv"), "--label-delim", " ", *TINY,
                 "--patience", "1", "--monitor", "val_top1", "--out", str(tmp_path / "bad")]) == 2



def test_killed_multilabel_run_resumes_bit_identical(tmp_path):
    """L-BFGS probe then 2 fine-tuning epochs; killed mid-epoch in fine-tuning, then right after the
    next commit (before the derived files): weights, metrics and thresholds as if never killed."""
    root = make_multilabel(tmp_path / "data", count=30)
    train = ["--data", str(root), "--labels", str(root / "labels.csv"), "--label-delim", " ", *TINY, "--no-report",
             "--deterministic", "--seed", "3", "--strategy", "two-stage", "--epochs", "2"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(train, ["step:3", "commit:1"], reference, run)
    def strip(s):
        return {k: v for k, v in s.items() if k != "train_seconds"}
    assert [strip(s) for s in _summary(run)["stages"]] == [strip(s) for s in _summary(reference)["stages"]]
    assert _summary(run)["thresholds"] == _summary(reference)["thresholds"]
    assert json.loads((run / "model.json").read_text()) == json.loads((reference / "model.json").read_text())
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"


def test_torchrun_two_processes_train_a_multilabel_run_that_one_process_scores_the_same(tmp_path):
    root = make_multilabel(tmp_path / "data", count=45)  # 9 val images: odd, so the shards differ
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(torchrun + ["-m", "tlearn", "train", "--data", str(root), "--labels",
                                        str(root / "labels.csv"), "--label-delim", " ", *TINY, "--device", "cpu",
                                        "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "2",
                                        "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(out)
    assert summary["task"] == "multi-label" and len(summary["stages"]) == 2 and (out / "report.html").is_file()
    alone = tlearn.evaluate(out, str(root), split="val", device="cpu")  # one process, every val image
    assert alone["count"] == 9 and abs(alone["map"] - summary["val_map"]) < 1e-9
