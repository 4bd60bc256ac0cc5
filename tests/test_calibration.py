"""Calibrated confidence: temperature scaling, ECE, coverage thresholds, and predict's "unknown"."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

import tlearn
from tlearn.calibration import (
    coverage_table,
    expected_calibration_error,
    fit_temperature,
    reliability,
    threshold_for_coverage,
)
from tlearn.cli import main
from tlearn.errors import ConfigError

from conftest import TINY_MODEL, kill_chain, make_folder


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    for true_temperature in (0.5, 2.0):
        logits = torch.from_numpy(rng.normal(0, 3, (6000, 10)))
        probs = (logits / true_temperature).softmax(dim=1).numpy()
        labels = np.array([rng.choice(10, p=row / row.sum()) for row in probs])
        assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.06)
    # an overconfident model (logits x3) is brought back: T near 3, top-1 unchanged by construction
    assert fit_temperature(3 * logits, labels) == pytest.approx(3 * 2.0, rel=0.06)


def test_ece_matches_a_hand_computation():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0, 1])
    # bins of width 1/15: 0.95 -> bin 14; 0.9 -> bin 13; 0.7 -> bin 10; 0.6 -> bin 8; 0.55 -> bin 8
    # bin 14: acc 1, conf .95; bin 13: acc 0, conf .9; bin 10: acc 1, conf .7; bin 8: acc .5, conf .575
    expected = (abs(1 - 0.95) + abs(0 - 0.9) + abs(1 - 0.7) + 2 * abs(0.5 - 0.575)) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    bins = reliability(probs, labels)
    assert bins.counts.sum() == 5 and bins.counts[8] == 2 and bins.accuracy[8] == 0.5
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0)) == 0.0


def test_coverage_threshold_answers_at_least_the_fraction():
    rng = np.random.default_rng(1)
    for count in (7, 100, 2345):
        confidences = rng.uniform(0.1, 1.0, count)
        table = coverage_table(confidences)
        for coverage in (0.001, 0.3, 0.8, 0.95, 0.999, 1.0):
            answered = (confidences >= threshold_for_coverage(table, coverage)).mean()
            assert coverage <= answered <= coverage + 1 / len(table) + 1 / count
    with pytest.raises(ConfigError):
        threshold_for_coverage(table, 0.0)


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """ant and dog share a colour (conftest.write_image): the model cannot be sure of them."""
    root = tmp_path_factory.mktemp("calibration")
    data = make_folder(root / "data", classes=("ant", "bee", "cat", "dog"), per_class=8, split_dirs=True)
    summary, run = tlearn.train(tlearn.RunConfig(
        data=tlearn.DataConfig(source=str(data), image_size=32, batch_size=8),
        model=tlearn.ModelConfig(name=TINY_MODEL, weights="none"),
        train=tlearn.TrainConfig(strategy="linear-probe", epochs=1, coverage=0.75, cache_dir=str(root / "cache"))),
        root / "run")
    return run, data, summary


def test_the_run_stores_its_temperature_ece_and_threshold(calibrated_run):
    from tlearn.checkpoint import load_model
    from tlearn.export import sidecar

    run, _, summary = calibrated_run
    info = json.loads((run / "model.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    assert info["temperature"] == summary["temperature"] == calibration["temperature"] > 0
    assert 0 <= summary["val_ece"] <= 1 and 0 <= summary["val_ece_uncalibrated"] <= 1
    assert json.loads((run / "summary.json").read_text())["val_ece"] == summary["val_ece"]
    assert info["min_confidence"] == summary["min_confidence"] > 0
    assert len(calibration["coverage_thresholds"]) == 1000
    side = sidecar(load_model(run))
    assert side["temperature"] == info["temperature"] and side["min_confidence"] == info["min_confidence"]
    assert (run / "reliability.png").is_file() and "<h2>Calibration</h2>" in (run / "report.html").read_text()


def test_eval_json_has_both_eces(calibrated_run, capsys):
    run, data, _ = calibrated_run
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["ece"] <= 1 and 0 <= result["ece_uncalibrated"] <= 1
    assert result["temperature"] == json.loads((run / "model.json").read_text())["temperature"]
    assert 0.75 <= result["answered"] <= 1  # the validation split, at the threshold train --coverage picked
    assert main(["eval", str(run), "--data", str(data)]) == 0
    assert f"calibration: ECE {result['ece']:.4f}" in capsys.readouterr().out


def _predicted(run, data, tmp_path, *flags, capsys=None):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), str(data / "val"), "--output", str(out), *flags]) == 0
    table = list(csv.DictReader(out.open()))
    rows = [(row["label"], float(row["prob"])) for row in table]
    thresholded = tuple(flags) != ("--min-confidence", "0")  # 0: always answer, no columns for it
    for row in table:  # the best guess of an unanswered image stays in the file
        assert ("guess" in row) == thresholded
        if thresholded:
            assert row["guess"] != "unknown" and row["answered"] == str(row["label"] != "unknown").lower()
    if capsys is not None:
        unknown = sum(label == "unknown" for label, _ in rows)
        assert f"{unknown} of {len(rows)} images answered 'unknown'" in capsys.readouterr().out
    return rows


def test_predict_answers_unknown_below_the_threshold(calibrated_run, tmp_path, capsys):
    run, data, summary = calibrated_run
    everything = _predicted(run, data, tmp_path, "--min-confidence", "0")
    assert all(label != "unknown" for label, _ in everything)
    middle = float(np.median([prob for _, prob in everything]))
    rows = _predicted(run, data, tmp_path, "--min-confidence", str(middle), capsys=capsys)
    assert [label == "unknown" for label, _ in rows] == [prob < middle for _, prob in everything]
    assert [prob for _, prob in rows] == [prob for _, prob in everything]  # the confidence stays shown
    # by default the run's own threshold (train --coverage 0.75): at least 3 in 4 validation images answered
    default = _predicted(run, data, tmp_path)
    assert sum(label != "unknown" for label, _ in default) >= 0.75 * len(default)
    for coverage in (0.5, 1.0):
        rows = _predicted(run, data, tmp_path, "--coverage", str(coverage))
        assert sum(label != "unknown" for label, _ in rows) >= coverage * len(rows)
    results = tlearn.load(run).predict(next((data / "val" / "ant").iterdir()), min_confidence=1.0)
    assert results[0]["label"] == "unknown" and results[0]["guess"] in {"ant", "dog"} and not results[0]["answered"]


def test_a_model_json_without_temperature_still_loads(calibrated_run, tmp_path):
    run, data, _ = calibrated_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    info = json.loads((old / "model.json").read_text())
    del info["temperature"], info["min_confidence"]
    (old / "model.json").write_text(json.dumps(info))
    (old / "calibration.json").unlink()
    trained = tlearn.load(old)
    assert trained.model.info.temperature == 1.0 and trained.min_confidence() is None
    image = next((data / "val" / "bee").iterdir())
    with torch.inference_mode():
        raw = trained.model(trained.prepare(image).unsqueeze(0)).softmax(dim=1).max().item()
    assert trained.predict(image)[0]["prob"] == pytest.approx(raw, abs=1e-6)
    assert main(["predict", str(old), str(image), "--coverage", "0.9"]) == 2  # no calibration.json: one line


@pytest.mark.parametrize("flags, message", [
    (["--min-confidence", "1.5"], "--min-confidence must be between 0 and 1"),
    (["--coverage", "0"], "--coverage must be above 0"),
    (["--coverage", "0.9", "--min-confidence", "0.5"], "give one of them"),
])
def test_bad_thresholds_exit_2_with_one_line(calibrated_run, capsys, flags, message):
    run, data, _ = calibrated_run
    capsys.readouterr()
    assert main(["predict", str(run), str(data / "val"), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_train_coverage_is_checked_before_anything_runs(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--coverage", "1.5"]) == 2
    assert "--coverage must be above 0 and at most 1" in capsys.readouterr().err
    from tlearn.multilabel import check_config

    with pytest.raises(ConfigError, match="single-label"):
        check_config(tlearn.RunConfig(data=tlearn.DataConfig(source="x", labels="t.csv", label_delim=" "),
                                      train=tlearn.TrainConfig(coverage=0.9)))


def test_a_killed_run_resumes_to_the_same_calibration(tmp_path):
    """Killed right after its only epoch's commit, the resumed process has no validation probabilities
    of its own: it predicts the validation split again with the best model and fits the same T."""
    data = make_folder(tmp_path / "data", classes=("ant", "bee", "cat", "dog"), per_class=8, split_dirs=True)
    train = ["--data", str(data), "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
             "--strategy", "linear-probe", "--epochs", "1", "--coverage", "0.75", "--deterministic", "--no-report",
             "--workers", "0"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(train, ["commit:1"], reference, run)
    resumed, expected = (json.loads((folder / "model.json").read_text()) for folder in (run, reference))
    assert resumed["temperature"] == pytest.approx(expected["temperature"], rel=1e-3)
    assert resumed["min_confidence"] == pytest.approx(expected["min_confidence"], abs=1e-4)
    assert json.loads((run / "summary.json").read_text())["val_ece"] == pytest.approx(
        json.loads((reference / "summary.json").read_text())["val_ece"], abs=1e-4)
    assert (run / "calibration.json").is_file()
