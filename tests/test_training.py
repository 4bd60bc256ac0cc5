"""fit end to end on tiny data: run folder contents, reload, predict, cache equivalence."""
import json

import torch
import yaml

import tlearn
from tlearn.data import load_splits

from conftest import TINY_MODEL, needs_shared

RUN_FILES = {"config.yaml", "metrics.csv", "model.safetensors", "model.json", "summary.json",
             "last.safetensors", "train_state.safetensors", "skipped_files.txt"}


def _is_pickle(path) -> bool:
    head = path.read_bytes()[:2]
    return head[:1] == b"\x80" or head == b"PK"  # raw pickle, or torch.save's zip of pickles


def test_two_stage_run_folder_is_complete_and_reloads(image_folder, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    out = tmp_path / "run"
    summary = tlearn.fit(model, str(image_folder), out=out, strategy="two-stage", head_epochs=2, epochs=2,
                         val_split=0.25, head_solver="sgd", lr=0.01, log=lambda _: None)
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    assert not any(_is_pickle(p) for p in out.iterdir() if p.is_file())
    for key in ("val_top1", "val_top5", "train_seconds"):
        assert key in summary
    assert [(s["name"], s["epochs"]) for s in summary["stages"]] == [("linear-probe", 2), ("finetune", 2)]
    assert summary["stages"][0]["cached_features"] and not summary["stages"][1]["cached_features"]
    assert summary["stages"][0]["trainable_params"] < summary["stages"][1]["trainable_params"]
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("stage,stage_epoch,epoch")
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["strategy"] == "two-stage" and "torch" in config["versions"]
    info = json.loads((out / "model.json").read_text())
    assert info["class_names"] == ["cat", "dog", "fox"] and info["preprocessing"]["crop_size"] == 32

    trained = tlearn.load(out)
    assert trained.class_names == ["cat", "dog", "fox"]
    best = json.loads((out / "summary.json").read_text())["val_top1"]
    assert tlearn.evaluate(out, str(image_folder), split="val")["top1"] >= 0.0
    predictions = trained.predict([next((image_folder / "dog").iterdir())], top_k=2)
    assert predictions[0]["label"] in trained.class_names and len(predictions[0]["labels"]) == 2
    assert 0 <= best <= 1


def test_linear_probe_on_images_with_augmentation_trains_uncached(image_folder, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    summary = tlearn.fit(model, str(image_folder), out=tmp_path / "r", strategy="linear-probe", epochs=1,
                         probe_augment="default", log=lambda _: None)
    assert summary["stages"][0]["cached_features"] is False


def test_learns_a_separable_problem(image_folder, tmp_path):
    """Class colour decides the label: a probe on random features must get well above chance."""
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    summary = tlearn.fit(model, str(image_folder), strategy="linear-probe", epochs=1, val_split=0.25,
                         log=lambda _: None)
    assert summary["val_top1"] >= 0.8


def _probe(data, tmp_path, use_cache, name):
    torch.manual_seed(0)
    model = tlearn.create_model("efficientnet_lite0", len(data.class_names), image_size=96)
    return tlearn.fit(model, data, out=tmp_path / name, strategy="linear-probe", epochs=3, head_solver="sgd",
                      use_cache=use_cache, augment="none", seed=0, log=lambda _: None)


def test_bundled_lite0_probe_on_cifar10_mini(tmp_path):
    """The honest accuracy check: real weights, real photos (logistic regression: 0.655)."""
    root = needs_shared("cifar10-mini")
    data = load_splits(str(root), val_split=0.1, seed=0)
    cached = _probe(data, tmp_path, True, "cached")
    uncached = _probe(data, tmp_path, False, "uncached")
    assert abs(cached["val_top1"] - uncached["val_top1"]) <= 0.01
    model = tlearn.create_model("efficientnet_lite0", 10, image_size=96)
    lbfgs = tlearn.fit(model, data, strategy="linear-probe", epochs=1, log=lambda _: None)
    assert lbfgs["val_top1"] >= 0.55, lbfgs["val_top1"]
    assert cached["val_top1"] >= 0.55, cached["val_top1"]
