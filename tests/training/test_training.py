"""fit end to end on tiny data: run folder contents, reload, predict, cache equivalence."""
import csv
import json

import pytest
import torch
import yaml

import tlearn
from tlearn.data import load_splits

from conftest import TINY_MODEL, needs_shared

RUN_FILES = {"config.yaml", "metrics.csv", "model.safetensors", "model.json", "summary.json",
             "last.safetensors", "train_state.safetensors", "skipped_files.txt"}


def _is_pickle(path) -> bool:
    head = path.read_bytes()[:9]
    if head[8:9] == b"{":  # safetensors: an 8-byte header length (its low byte may be 0x80), then the JSON header
        return False
    return head[:1] == b"\x80" or head[:2] == b"PK"  # raw pickle, or torch.save's zip of pickles


def test_two_stage_run_folder_is_complete_and_reloads(split_folder, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    out = tmp_path / "run"
    summary = tlearn.fit(model, str(split_folder), out=out, strategy="two-stage", head_epochs=2, epochs=2,
                         head_solver="sgd", lr=0.01)
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    assert not any(_is_pickle(p) for p in out.iterdir() if p.is_file())
    assert json.loads((out / "summary.json").read_text()) == summary
    assert [(s["name"], s["epochs"]) for s in summary["stages"]] == [("linear-probe", 2), ("finetune", 2)]
    assert summary["stages"][0]["cached_features"] and not summary["stages"][1]["cached_features"]
    assert summary["stages"][0]["trainable_params"] < summary["stages"][1]["trainable_params"]
    assert (summary["num_train"], summary["num_val"], summary["epochs_completed"]) == (18, 6, 4)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 4 and [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    # the summary's score is the best epoch's (the first to reach it: only a gain replaces the model)
    val_top1 = [float(r["val_top1"]) for r in rows]
    assert summary["val_top1"] == pytest.approx(max(val_top1), abs=1e-6)
    assert summary["best_epoch"] == 1 + val_top1.index(max(val_top1))
    # train_seconds is the epochs' own time: each row's seconds, summed (rounded to 0.01 s)
    assert summary["train_seconds"] > 0
    assert summary["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows), abs=0.01)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["strategy"] == "two-stage" and "torch" in config["versions"]
    info = json.loads((out / "model.json").read_text())
    assert info["class_names"] == ["cat", "dog", "fox"] and info["preprocessing"]["crop_size"] == 32

    trained = tlearn.load(out)
    assert trained.class_names == ["cat", "dog", "fox"]
    # model.safetensors is the model the summary scored: the same val/ images give the same top-1
    evaluated = tlearn.evaluate(out, str(split_folder), split="val")
    assert evaluated["count"] == 6
    assert evaluated["top1"] == pytest.approx(summary["val_top1"], abs=1e-6)
    predictions = trained.predict([next((split_folder / "val" / "dog").iterdir())], top_k=2)
    assert predictions[0]["label"] in trained.class_names and len(predictions[0]["labels"]) == 2
    assert predictions[0]["probs"][0] >= predictions[0]["probs"][1]


def test_linear_probe_on_images_with_augmentation_trains_uncached(image_folder, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    summary = tlearn.fit(model, str(image_folder), out=tmp_path / "r", strategy="linear-probe", epochs=1,
                         probe_augment="default")
    assert summary["stages"][0]["cached_features"] is False


def test_learns_a_separable_problem(image_folder, tmp_path):
    """Class colour decides the label: a probe on random features must get well above chance."""
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    summary = tlearn.fit(model, str(image_folder), out=tmp_path / "run", strategy="linear-probe", epochs=1,
                         val_split=0.25)
    assert summary["val_top1"] >= 0.8


def _probe(data, tmp_path, use_cache, name):
    torch.manual_seed(0)
    model = tlearn.create_model("efficientnet_lite0", len(data.class_names), image_size=96)
    return tlearn.fit(model, data, out=tmp_path / name, strategy="linear-probe", epochs=3, head_solver="sgd",
                      use_cache=use_cache, augment="none", seed=0)


def test_bundled_lite0_probe_on_cifar10_mini(tmp_path):
    """The honest accuracy check: real weights, real photos (logistic regression: 0.655)."""
    root = needs_shared("cifar10-mini")
    data = load_splits(str(root), val_split=0.1, seed=0)
    cached = _probe(data, tmp_path, True, "cached")
    uncached = _probe(data, tmp_path, False, "uncached")
    assert abs(cached["val_top1"] - uncached["val_top1"]) <= 0.01
    model = tlearn.create_model("efficientnet_lite0", 10, image_size=96)
    lbfgs = tlearn.fit(model, data, out=tmp_path / "lbfgs", strategy="linear-probe", epochs=1)
    assert lbfgs["val_top1"] >= 0.55, lbfgs["val_top1"]
    assert cached["val_top1"] >= 0.55, cached["val_top1"]


def test_metrics_split_each_epochs_time(image_folder, tmp_path):
    """Where an epoch's time went: data, forward + backward, optimiser, validation; parts of the whole."""
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    tlearn.fit(model, str(image_folder), out=tmp_path / "run", strategy="two-stage", head_epochs=1, epochs=1,
               val_split=0.25, report=False)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    parts = ("data_seconds", "compute_seconds", "optimizer_seconds", "eval_seconds")
    for row in rows:
        assert sum(float(row[p]) for p in parts) <= float(row["seconds"]) + 1e-3, row
        assert float(row["compute_seconds"]) > 0 and float(row["eval_seconds"]) > 0, row
    probe, finetune = rows
    assert float(probe["data_seconds"]) == 0 and float(probe["optimizer_seconds"]) == 0  # one L-BFGS solve
    assert float(finetune["optimizer_seconds"]) > 0 and float(finetune["data_seconds"]) > 0
