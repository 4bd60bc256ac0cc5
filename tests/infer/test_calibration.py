"""Calibrated confidence: temperature scaling, ECE, coverage thresholds, and predict's "unknown"."""
import csv
import json
import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tlearn
from tlearn.cli import main
from tlearn.data.preprocessing import Preprocessing
from tlearn.errors import ConfigError
from tlearn.infer.calibration import calibrate_run
from tlearn.metrics.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    as_logits,
    coverage_table,
    expected_calibration_error,
    fit_temperature,
    reliability,
    threshold_for_coverage,
)
from tlearn.metrics.calibration_choice import BOUND_MARGIN, FOLDS, REPEATS, fold_assignment
from tlearn.models.classifier import ModelInfo

from conftest import TINY_MODEL, kill_chain, make_folder, train_tiny


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


def _synthetic(seed: int, count: int, true_temperature: float, classes: int = 10):
    """A model's softmax(logits) whose labels are drawn from softmax(logits / true T): miscalibrated by
    exactly that T (T = 1: calibrated already)."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.normal(0, 3, (count, classes)))
    truth = (logits / true_temperature).softmax(dim=1).numpy()
    labels = (truth.cumsum(axis=1) > rng.random((count, 1))).argmax(axis=1)
    return logits.softmax(dim=1).float(), labels


def _separated(count: int, classes: int = 10):
    """Every image right: the likelihood keeps rising as T goes to 0."""
    probs, _ = _synthetic(0, count, 1.0, classes)
    return probs, probs.argmax(dim=1).numpy()


def _calibrate(tmp_path, probs, labels, caplog):
    """calibrate_run into a run folder of its own: (model.json, calibration.json, summary, its log lines)."""
    classes = probs.shape[1]
    info = ModelInfo(name="synthetic", library="bundled", arch="synthetic", num_classes=classes, num_features=1,
                     weights="none", weights_id="none", preprocessing=Preprocessing(32, 32, "bilinear", (0.5,) * 3,
                                                                                    (0.5,) * 3),
                     class_names=[f"c{i}" for i in range(classes)])
    summary = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tlearn"):
        calibrate_run(tmp_path, info, probs, labels, None, summary)
    lines = [r.getMessage() for r in caplog.records if r.name == "tlearn.infer.calibration"]
    return (json.loads((tmp_path / "model.json").read_text()), json.loads((tmp_path / "calibration.json").read_text()),
            summary, lines)


def _kept_t_1(model_json, calibration, summary, lines, decision):
    assert model_json["temperature"] == summary["temperature"] == calibration["temperature"] == 1.0
    assert summary["calibration"] == calibration["decision"] == decision
    assert summary["val_ece"] == summary["val_ece_uncalibrated"] == calibration["ece"]
    assert calibration["reliability"] == calibration["reliability_uncalibrated"]
    assert len(lines) == 1 and "keeping T = 1" in lines[0] and calibration["reason"] in lines[0]


@pytest.mark.parametrize("count, decision, why", [(20, "too few images", "too few"),
                                                  (200, "at bound", "bound")])
def test_a_tiny_or_perfectly_separated_split_keeps_t_1_and_says_why(tmp_path, caplog, count, decision, why):
    """Every image right drives the in-sample fit to the bound 0.05 (what the run stored before)."""
    probs, labels = _separated(count)
    assert fit_temperature(as_logits(probs), labels) < MIN_TEMPERATURE * BOUND_MARGIN
    model_json, calibration, summary, lines = _calibrate(tmp_path, probs, labels, caplog)
    _kept_t_1(model_json, calibration, summary, lines, decision)
    assert why in calibration["reason"]


def test_a_temperature_that_raises_the_out_of_fold_nll_keeps_t_1(tmp_path, caplog):
    """A calibrated model on 100 images: the in-sample fit moves T by chance (seed 10: 1.17),
    and that T makes the images it did not see worse."""
    probs, labels = _synthetic(10, 100, 1.0)
    assert abs(fit_temperature(as_logits(probs), labels) - 1) > 0.1
    model_json, calibration, summary, lines = _calibrate(tmp_path, probs, labels, caplog)
    _kept_t_1(model_json, calibration, summary, lines, "not improved")
    assert calibration["nll_out_of_fold"] > calibration["nll_uncalibrated"]
    assert len(calibration["fold_temperatures"]) == calibration["folds"] * calibration["repeats"] == FOLDS * REPEATS


def test_a_miscalibrated_split_gets_the_true_temperature_and_its_out_of_fold_ece(tmp_path, caplog):
    probs, labels = _synthetic(0, 400, 2.5)
    model_json, calibration, summary, lines = _calibrate(tmp_path, probs, labels, caplog)
    temperature = model_json["temperature"]
    assert summary["calibration"] == calibration["decision"] == "fitted"
    assert temperature == pytest.approx(2.5, rel=0.2) and len(lines) == 1 and "out-of-fold" in lines[0]
    # the reported ECE is the out-of-fold one, recomputed here fold by fold
    logits, held_out = as_logits(probs), torch.zeros(len(labels), 10, dtype=torch.float64)
    assert calibration["repeats"] == REPEATS  # 400 x 10 is small: every cut is made
    for repeat in range(REPEATS):
        folds, scaled = fold_assignment(labels, FOLDS, repeat), torch.empty_like(logits)
        for fold in range(FOLDS):
            inside = folds != fold
            scaled[~inside] = logits[~inside] / fit_temperature(logits[inside], labels[inside])
        held_out += scaled.softmax(dim=1) / REPEATS
    out_of_fold = reliability(held_out.float().numpy(), labels)
    assert summary["val_ece"] == calibration["ece"] == round(out_of_fold.ece, 6) < summary["val_ece_uncalibrated"]
    assert calibration["reliability"] == out_of_fold.to_dict()
    in_sample = expected_calibration_error((logits / temperature).softmax(dim=1).numpy(), labels)
    assert summary["val_ece"] != round(in_sample, 6)
    assert calibration["nll_out_of_fold"] < calibration["nll_uncalibrated"]
    # the coverage table: the stored T on every validation image, as predict applies it
    lowest = (logits / temperature).softmax(dim=1).max(dim=1).values.min().item()
    assert calibration["coverage_thresholds"][-1] == pytest.approx(lowest, abs=1e-5)
    # on 2,000 unseen images from the same model the stored T still helps
    unseen, unseen_labels = _synthetic(1, 2000, 2.5)
    after = expected_calibration_error((as_logits(unseen) / temperature).softmax(dim=1).numpy(), unseen_labels)
    assert after < 0.05 < expected_calibration_error(unseen.numpy(), unseen_labels)


def test_no_temperature_is_stored_at_a_bound(tmp_path, caplog):
    """Labels unrelated to the scores drive the fit to the upper bound 20; and across splits of
    every kind the stored T is 1 or strictly inside the bounds."""
    rng = np.random.default_rng(7)
    probs, _ = _synthetic(1, 200, 1.0)
    labels = rng.integers(0, 10, 200)
    assert fit_temperature(as_logits(probs), labels) > MAX_TEMPERATURE / BOUND_MARGIN
    _kept_t_1(*_calibrate(tmp_path / "random", probs, labels, caplog), "at bound")
    for index, (count, truth) in enumerate([(60, 0.2), (60, 8.0), (300, 0.3), (300, 1.0), (1000, 15.0)]):
        model_json, *_ = _calibrate(tmp_path / str(index), *_synthetic(index, count, truth), caplog)
        assert MIN_TEMPERATURE * BOUND_MARGIN < model_json["temperature"] < MAX_TEMPERATURE / BOUND_MARGIN


def test_the_report_shows_the_out_of_fold_figures_and_why_t_1_was_kept(tmp_path):
    from tlearn.reports._calibration import reliability_section

    for name, (probs, labels), phrase in (("fitted", _synthetic(0, 400, 2.5), "out-of-fold"),
                                          ("kept", _separated(20), "keeps T = 1")):
        info, summary = SimpleNamespace(temperature=1.0, min_confidence=None), {}  # no run folder: no model.json
        calibrated, calibration = calibrate_run(None, info, probs, labels, None, summary)
        page = reliability_section(tmp_path, calibrated.numpy(), labels, summary, calibration)
        assert phrase in page and f"<b>{summary['val_ece']:.4f}</b>" in page
        if name == "kept":
            assert calibration["reason"] in page
        # the same run's figures on other images (tlearn eval --report) say why T = 1, from the summary
        other = reliability_section(tmp_path, calibrated.numpy(), labels, summary)
        assert ("too few images" in other) == (name == "kept")


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """ant and dog share a colour (conftest.write_image): the model cannot be sure of them."""
    root = tmp_path_factory.mktemp("calibration")
    data = make_folder(root / "data", classes=("ant", "bee", "cat", "dog"), per_class=8, split_dirs=True)
    summary, run = train_tiny(root, data, strategy="linear-probe", epochs=1, coverage=0.75)
    return run, data, summary


def test_the_run_stores_its_temperature_ece_and_threshold(calibrated_run):
    from tlearn.infer.export import sidecar
    from tlearn.run_folder.checkpoint import load_model

    run, _, summary = calibrated_run
    info = json.loads((run / "model.json").read_text())
    calibration = json.loads((run / "calibration.json").read_text())
    assert info["temperature"] == summary["temperature"] == calibration["temperature"] > 0
    assert 0 <= summary["val_ece"] <= 1 and 0 <= summary["val_ece_uncalibrated"] <= 1
    # 8 validation images: too few to fit a temperature on, so T = 1 and the reason, everywhere
    assert info["temperature"] == 1.0 and summary["calibration"] == calibration["decision"] == "too few images"
    assert summary["val_ece"] == summary["val_ece_uncalibrated"]
    assert json.loads((run / "summary.json").read_text())["val_ece"] == summary["val_ece"]
    assert info["min_confidence"] == summary["min_confidence"] > 0
    assert len(calibration["coverage_thresholds"]) == 1000
    side = sidecar(load_model(run))
    assert side["temperature"] == info["temperature"] and side["min_confidence"] == info["min_confidence"]
    page = (run / "report.html").read_text()
    assert (run / "reliability.png").is_file() and "<h2>Calibration</h2>" in page and "keeps T = 1" in page


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
    from tlearn.task import Task

    with pytest.raises(ConfigError, match="single-label"):
        config = tlearn.RunConfig(data=tlearn.DataConfig(source="x", labels="t.csv", label_delim=" "),
                                  train=tlearn.TrainConfig(coverage=0.9))
        Task.of(config).check_config(config)


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
