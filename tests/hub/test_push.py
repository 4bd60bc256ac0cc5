"""`tlearn push`: the Hub folder loads in timm itself and in tlearn with the run's logits, the model
card's figures are the run's, `hf-hub:` names load through huggingface_hub, bad input is one line.
The one test that uploads needs the network and a token: it skips with its reason without them."""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest
import timm
import torch
import yaml

import tlearn
from tlearn.hub import load_hub_model, model_card

from conftest import TINY_MODEL, make_folder, run_cli

TRAIN = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--seed", "1", "--epochs", "1",
         "--head-epochs", "1", "--no-report"]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> tuple[Path, Path]:
    """A finished, exported run and the folder `push --local-dir` wrote of it."""
    root = tmp_path_factory.mktemp("push")
    data = make_folder(root / "data", per_class=12)
    run, folder = root / "run", root / "hub"
    env = {"TLEARN_CACHE": str(root / "cache")}
    done = run_cli("train", "--data", str(data), *TRAIN, "--val-split", "0.25", "--out", str(run), env=env)
    assert done.returncode == 0, done.stderr
    assert run_cli("export", str(run), env=env).returncode == 0
    done = run_cli("push", str(run), "--repo-id", "someone/tiny-classifier", "--local-dir", str(folder), env=env)
    assert done.returncode == 0, done.stderr
    return run, folder


def _images(seed: int = 0) -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_folder_holds_timm_files_tlearn_files_the_onnx_graph_and_the_card(pushed):
    run, folder = pushed
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "model.json",
                                                  "calibration.json", "summary.json", "model.onnx",
                                                  "model.onnx.json", "README.md"}
    config = json.loads((folder / "config.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == summary["class_names"] == ["cat", "dog", "fox"]
    prep = json.loads((run / "model.json").read_text())["preprocessing"]
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, prep["crop_size"], prep["crop_size"]]
    assert cfg["mean"] == prep["mean"] and cfg["std"] == prep["std"] and cfg["interpolation"] == prep["interpolation"]


def test_timm_and_tlearn_load_the_folder_with_the_runs_logits(pushed):
    run, folder = pushed
    images = _images()
    with torch.inference_mode():
        expected = tlearn.load(run).model(images)
        by_file = timm.create_model("test_resnet", pretrained=True, num_classes=3,
                                    pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"),
                                                                num_classes=3)).eval()
        by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # as hf-hub: reads it
        hub_model = load_hub_model(folder)
        for model in (by_file, by_folder, hub_model):
            assert torch.allclose(model(images), expected, atol=1e-5)
    assert by_folder.pretrained_cfg["label_names"] == ["cat", "dog", "fox"]
    assert hub_model.info.temperature == tlearn.load(run).model.info.temperature


def test_the_cards_figures_are_the_runs(pushed):
    run, folder = pushed
    summary = json.loads((run / "summary.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    card = (folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "timm" and "tlearn" in header["tags"]
    figures = {m["name"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert figures["Top-1 accuracy (validation)"] == summary["val_top1"]
    assert figures["Balanced accuracy (validation)"] == summary["val_balanced_acc"]
    assert figures["Macro-F1 (validation)"] == summary["val_f1_macro"]
    assert figures["Expected calibration error (validation)"] == summary["val_ece"]
    assert f"{calibration['ece_uncalibrated']:.4f} before, {calibration['ece']:.4f} after" in card
    assert f"T = {calibration['temperature']:g}" in card
    for name, count in zip(summary["class_names"], summary["train_class_counts"]):
        assert f"| {name} | {count} |" in card
    per_class = summary["val_per_class"]
    assert sum(row["support"] for row in per_class.values()) == summary["num_val"]
    for name, row in per_class.items():
        assert (f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
                in card)
    assert f"{summary['num_train']} training and {summary['num_val']} validation images" in card
    assert "onnxruntime" in card and 'tlearn.load("hf-hub:someone/tiny-classifier")' in card
    assert str(run) not in card  # no local paths on the Hub


def test_a_distilled_runs_card_names_the_teacher(pushed, tmp_path):
    run, _ = pushed
    summary = json.loads((run / "summary.json").read_text())
    figures = {"teacher_run": "/somewhere/teacher", "teacher_model": "efficientnet_lite2", "teacher_weights": "w",
               "teacher_input_size": 260, "teacher_val_top1": 0.9123, "student_input_size": 224,
               "teacher_latency_ms": 30.5, "student_latency_ms": 12.25, "speedup": 2.49, "latency_device": "cpu",
               "temperature": 4.0, "distill_weight": 0.5, "label_weight": 0.5, "num_unlabeled": 0}
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("summary.json", "model.json", "config.yaml", "calibration.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    (copy / "summary.json").write_text(json.dumps({**summary, "distillation": figures}))
    card = model_card(copy, "someone/student")
    assert "knowledge-distillation" in card and "## Distillation" in card
    assert re.search(r"\| validation top-1 \| 0\.9123 \| " + re.escape(f"{summary['val_top1']:.4f}"), card)
    assert "30.50 ms | 12.25 ms" in card and "/somewhere/teacher" not in card


def test_hf_hub_names_load_through_huggingface_hub(pushed, monkeypatch):
    run, folder = pushed
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    trained = tlearn.load("hf-hub:someone/tiny-classifier")
    assert asked == ["someone/tiny-classifier"] and trained.class_names == ["cat", "dog", "fox"]
    image = next((run.parent / "data" / "dog").glob("*.png"))
    assert trained.predict(image)[0]["label"] == tlearn.load(run).predict(image)[0]["label"]


def test_an_unreachable_hub_is_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # nothing cached, no network allowed
    image = tmp_path / "a.png"
    make_folder(tmp_path / "images", per_class=1)
    image = next((tmp_path / "images").rglob("*.png"))
    done = run_cli("predict", "hf-hub:someone/not-pushed", str(image), env=env)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cannot download someone/not-pushed" in done.stderr


@pytest.mark.parametrize("repo_id, message", [
    ("not a repo", "is not valid"), ("no-namespace", "is not USER/NAME"), ("a/b/c", "is not valid"),
])
def test_a_bad_repo_id_is_one_line_before_anything_is_written(pushed, tmp_path, repo_id, message):
    run, _ = pushed
    out = tmp_path / "hub"
    done = run_cli("push", str(run), "--repo-id", repo_id, "--local-dir", str(out))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_an_unfinished_run_or_a_foreign_folder_is_refused(pushed, tmp_path):
    run, _ = pushed
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "model.json").write_bytes((run / "model.json").read_bytes())
    done = run_cli("push", str(unfinished), "--repo-id", "a/b", "--local-dir", str(tmp_path / "out"))
    assert done.returncode == 2 and "is not a finished tlearn run" in done.stderr, done.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    done = run_cli("push", str(run), "--repo-id", "a/b", "--local-dir", str(foreign))
    assert done.returncode == 2 and "notes.txt" in done.stderr, done.stderr


def test_push_uploads_to_the_hub(pushed):
    """The real upload and download: needs HF_TOKEN and TLEARN_TEST_HUB_NAMESPACE (a user or organisation
    the token may create repositories in), and the network."""
    namespace = os.environ.get("TLEARN_TEST_HUB_NAMESPACE")
    if not os.environ.get("HF_TOKEN") or not namespace:
        pytest.skip("uploading needs the network, HF_TOKEN and TLEARN_TEST_HUB_NAMESPACE")
    run, _ = pushed
    repo_id = f"{namespace}/tlearn-test-{uuid.uuid4().hex[:8]}"
    done = run_cli("push", str(run), "--repo-id", repo_id, "--private")
    assert done.returncode == 0, done.stderr
    try:
        trained = tlearn.load(f"hf-hub:{repo_id}")
        with torch.inference_mode():
            assert torch.allclose(trained.model(_images()), tlearn.load(run).model(_images()), atol=1e-5)
    finally:
        from huggingface_hub import HfApi

        HfApi().delete_repo(repo_id)


def _write_audit(folder: Path, image: Path, given: str = "dog") -> Path:
    """An audit folder as `tlearn audit` writes it (audit/run.py's write_audit): one pair, one label issue."""
    folder.mkdir(parents=True)
    (folder / "duplicates.csv").write_text("path_a,path_b,similarity,kind,cross_split\n"
                                           f"{image},{image.with_name('1.png')},1.0000,exact,true\n")
    (folder / "label_issues.csv").write_text(f"path,given,suggested,score\n{image},{given},cat,0.0123\n")
    return folder


def test_an_audit_of_the_same_data_goes_into_the_card_and_one_of_other_data_is_refused(pushed, tmp_path):
    run, _ = pushed
    image = (run.parent / "data" / "dog" / "0.png").resolve()
    audit = _write_audit(tmp_path / "audit", image)
    out = tmp_path / "hub"
    done = run_cli("push", str(run), "--repo-id", "a/b", "--local-dir", str(out), "--audit", str(audit))
    assert done.returncode == 0, done.stderr
    card = (out / "README.md").read_text()
    assert "found 1 duplicate pairs (1 exact, 1 across the training and validation split) and 1 images" in card
    assert "| 0.png | dog | cat | 0.0123 |" in card
    other = _write_audit(tmp_path / "other", tmp_path / "elsewhere" / "0.png")
    done = run_cli("push", str(run), "--repo-id", "a/b", "--local-dir", str(tmp_path / "hub2"), "--audit", str(other))
    assert done.returncode == 2 and "audited other data than the run" in done.stderr, done.stderr
    wrong_classes = _write_audit(tmp_path / "classes", image, given="owl")
    done = run_cli("push", str(run), "--repo-id", "a/b", "--local-dir", str(tmp_path / "hub3"),
                   "--audit", str(wrong_classes))
    assert done.returncode == 2 and "classes owl" in done.stderr, done.stderr


def test_serve_answers_for_an_hf_hub_name(pushed, monkeypatch):
    """`tlearn serve hf-hub:USER/NAME`: the pushed folder is downloaded and served by the eager model
    (nothing is written into huggingface_hub's cache); its answers are the run's."""
    from fastapi.testclient import TestClient

    from tlearn.errors import UserError
    from tlearn.serve import ServeSettings, create_app

    run, folder = pushed
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, **kwargs: str(folder))
    before = sorted(p.name for p in folder.rglob("*"))
    images = sorted((run.parent / "data" / "dog").glob("*.png"))[:2]
    expected = [row["label"] for row in tlearn.load(run).predict(images)]
    with TestClient(create_app("hf-hub:someone/tiny-classifier", ServeSettings(max_wait_ms=5))) as client:
        response = client.post("/predict", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in images])
        assert response.status_code == 200, response.text
        assert [answer["labels"][0] for answer in response.json()["predictions"]] == expected
        assert client.get("/metadata").json()["engine"] == "torch"
    assert sorted(p.name for p in folder.rglob("*")) == before
    with pytest.raises(UserError, match="needs a run folder"):
        create_app("hf-hub:someone/tiny-classifier", ServeSettings(engine="int8"))
