"""`tlearn train --unlabeled DIR`: pseudo-labels chosen by self-training on cached features, weighted
in both stages' losses (mini-batch and L-BFGS), recorded in summary.json and the run folder, read
back on resume; bad input in one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tlearn.config import TrainConfig
from tlearn.features.few_labels import SELF_TRAINING_ROUNDS, SELF_TRAINING_SHARE, SELF_TRAINING_WEIGHT
from tlearn.features.head_solver import _Chunks, _loss_and_grad
from tlearn.run_folder import checkpoint
from tlearn.run_folder.guard import RUN_FILES
from tlearn.training.pseudo_labels import PSEUDO_FILE, PseudoWeightedLoss

from conftest import TINY_MODEL, kill_chain, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--no-report"]


class _Rows:
    def __init__(self, pseudo):
        self.pseudo = pseudo


def test_the_weighted_loss_counts_a_pseudo_label_as_weight_of_a_label():
    generator = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(5, 3, generator=generator), torch.tensor([0, 1, 2, 1, 0])
    pseudo = torch.tensor([False, True, False, True, True])
    per_row = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    for weight in (0.3, 1.0, 2.5):
        got = PseudoWeightedLoss(torch.nn.CrossEntropyLoss(), _Rows(pseudo), weight)(logits, targets)
        expected = (per_row * torch.where(pseudo, weight, 1.0)).sum() / 5
        assert torch.allclose(got, expected), weight
    plain = PseudoWeightedLoss(torch.nn.CrossEntropyLoss(), _Rows(None), 0.3)(logits, targets)
    assert torch.allclose(plain, per_row.mean())


def test_the_lbfgs_objective_weights_each_row():
    """A row of weight 0 is a row left out; weights of 2 count a row twice."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])
    weight = torch.randn(3, 4, generator=generator, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)

    def loss(rows_x, rows_y, sample_weights=None):
        return _loss_and_grad(_Chunks(rows_x, rows_y, torch.float32, 4), weight, bias, 0.0, None, False,
                              sample_weights).item()

    dropped = loss(x[:4], y[:4]) * 4 / 6  # the same sum over the same norm (6 rows)
    assert loss(x, y, torch.tensor([1.0, 1, 1, 1, 0, 0])) == pytest.approx(dropped, rel=1e-5)
    doubled = torch.cat([x, x[:1]]), torch.cat([y, y[:1]])
    assert loss(x, y, torch.tensor([2.0, 1, 1, 1, 1, 1])) == pytest.approx(loss(*doubled) * 7 / 6, rel=1e-5)


def test_the_flags_defaults_are_the_measured_self_training_defaults():
    settings = TrainConfig()
    assert (settings.pseudo_share, settings.pseudo_rounds, settings.pseudo_weight) == (
        SELF_TRAINING_SHARE, SELF_TRAINING_ROUNDS, SELF_TRAINING_WEIGHT)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return (make_folder(tmp_path / "data", per_class=8, split_dirs=True),
            make_folder(tmp_path / "unlabeled", per_class=10))


def _train(data: Path, out: Path, *extra: str):
    return run_cli("train", "--data", str(data), *TINY, "--epochs", "1", "--head-epochs", "1", *extra,
                   "--out", str(out))


def test_train_unlabeled_records_its_pseudo_labels_and_trains_on_them(folders, tmp_path):
    data, unlabeled = folders
    done = _train(data, tmp_path / "run", "--unlabeled", str(unlabeled), "--pseudo-share", "0.5")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    assert set(p.name for p in run.iterdir() if not p.name.startswith(".")) <= RUN_FILES
    pseudo = json.loads((run / "summary.json").read_text())["pseudo_labels"]
    assert pseudo["unlabeled_images"] == 30 and pseudo["share"] == 0.5 and pseudo["rounds"] == 8
    assert pseudo["used"] == sum(pseudo["per_class"].values()) == 15  # half of each predicted class
    assert set(pseudo["per_class"]) == {"cat", "dog", "fox"}
    check = pseudo["validation"]
    assert check["images"] == 6 and 0 < check["pseudo_labelled"] <= 6 and 0.0 <= check["accuracy"] <= 1.0
    images = json.loads((run / PSEUDO_FILE).read_text())["images"]
    assert len(images) == 15 and all((unlabeled / path).is_file() for path, _ in images)
    assert "pseudo-labelled features: 15" in done.stdout  # the probe stage trained on them
    # a different weight trains different heads: the weight reaches both stages' losses
    other = _train(data, tmp_path / "other", "--unlabeled", str(unlabeled), "--pseudo-share", "0.5",
                   "--pseudo-weight", "3")
    assert other.returncode == 0, other.stderr
    first, second = (load_file(str(folder / checkpoint.MODEL_FILE)) for folder in (run, tmp_path / "other"))
    assert any(not torch.equal(first[key], second[key]) for key in first)


def test_a_run_without_unlabeled_has_no_pseudo_labels(folders, tmp_path):
    data, _ = folders
    done = _train(data, tmp_path / "run", "--strategy", "linear-probe")
    assert done.returncode == 0, done.stderr
    assert "pseudo_labels" not in json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not (tmp_path / "run" / PSEUDO_FILE).exists()


def test_a_killed_unlabeled_run_resumes_bit_identical(folders, tmp_path):
    """Killed after the probe's commit and mid fine-tuning: the resumed run reads its pseudo-labels back
    (its model has moved on) and ends with the weights of an uninterrupted run."""
    data, unlabeled = folders
    args = ["--data", str(data), *TINY, "--unlabeled", str(unlabeled), "--deterministic", "--epochs", "2",
            "--head-epochs", "1", "--batch-size", "8", "--lr", "0.01"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(args, ["commit:1", "step:4"], reference, run)
    for name in (checkpoint.MODEL_FILE, checkpoint.LAST_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    summaries = [json.loads((folder / "summary.json").read_text())["pseudo_labels"] for folder in (reference, run)]
    assert summaries[0] == summaries[1]


@pytest.mark.parametrize("case, message", [
    ("missing", "--unlabeled not found"),
    ("empty", "holds no usable image files"),
    ("builtin", "--unlabeled needs --data FOLDER"),
    ("multi-label", "--unlabeled is single-label"),
    ("share", "--pseudo-share must be above 0"),
    ("mixup", "--unlabeled with --mixup"),
])
def test_bad_input_is_one_line_exit_2(folders, tmp_path, case, message):
    data, unlabeled = folders
    source, extra = str(data), []
    if case == "missing":
        unlabeled = tmp_path / "nowhere"
    if case == "empty":
        unlabeled = tmp_path / "empty"
        unlabeled.mkdir()
    if case == "builtin":
        source = "digits"
    if case == "multi-label":
        table = tmp_path / "labels.csv"
        table.write_text("path,labels\n" + "".join(f"{p.relative_to(data)},{p.parent.name}\n"
                                                   for p in sorted(data.rglob("*.png"))))
        extra = ["--labels", str(table), "--label-delim", " "]
    if case == "share":
        extra = ["--pseudo-share", "0"]
    if case == "mixup":
        extra = ["--mixup", "0.2"]
    out = tmp_path / "out"
    done = run_cli("train", "--data", source, *TINY, "--unlabeled", str(unlabeled), *extra, "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_self_training_grows_its_share_round_by_round(monkeypatch):
    """Round r of R pseudo-labels share x r / R of each predicted class (grow=False: share every round)."""
    from tlearn.features import few_labels

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 8))
    unlabelled = np.concatenate([centre + rng.normal(0, 1, (40, 8)) for centre in centres])
    labelled, labels = centres + rng.normal(0, 1, (3, 8)), np.arange(3)
    fitted, fit = [], few_labels.fit_probe

    def counting(features, *args, **kwargs):
        fitted.append(len(features))
        return fit(features, *args, **kwargs)

    monkeypatch.setattr(few_labels, "fit_probe", counting)
    result = few_labels.self_train(labelled, labels, unlabelled, 3, share=0.5, rounds=4, weight=0.5)
    assert fitted == [3, 3 + 15, 3 + 30, 3 + 45, 3 + 60]  # 40 a predicted class: 5, 10, 15, 20 of each
    assert len(result.pseudo_indices) == 60 and (result.pseudo_indices // 40 == result.pseudo_labels).all()
    fitted.clear()
    few_labels.self_train(labelled, labels, unlabelled, 3, share=0.5, rounds=2, weight=0.5, grow=False)
    assert fitted == [3, 63, 63]
