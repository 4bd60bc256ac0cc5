"""Distillation: Hinton's loss, the teacher's view of the student's images, the logit cache, and
`tlearn distill` end to end: an ordinary run folder naming its teacher, --unlabeled, exact resume
after a kill, and bad input in one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tlearn.config import DistillConfig
from tlearn.data import NO_LABEL, Preprocessing
from tlearn.run_folder import checkpoint
from tlearn.run_folder.guard import RUN_FILES
from tlearn.training._teacher import teacher_view
from tlearn.training.distillation import DistillationLoss

from conftest import TINY_MODEL, kill_chain, make_folder, run_cli

TEACHER = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--seed", "1"]
STUDENT = ["--student", "timm:test_efficientnet", "--weights", "none", "--image-size", "24"]


class _Source:
    def __init__(self, logits):
        self.teacher_logits = logits


def test_loss_is_hinton_kl_times_t_squared_plus_the_label_loss_on_labelled_rows():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    targets = torch.tensor([0, NO_LABEL, 2, 1])
    loss = DistillationLoss(torch.nn.CrossEntropyLoss(), _Source(teacher),
                            DistillConfig(teacher="t", temperature=3.0, distill_weight=0.7, label_weight=0.2))
    soft_teacher = F.softmax(teacher / 3, dim=1)
    kl = (soft_teacher * (soft_teacher.log() - F.log_softmax(student / 3, dim=1))).sum(1).mean() * 9
    labelled = targets != NO_LABEL
    expected = 0.2 * F.cross_entropy(student[labelled], targets[labelled]) + 0.7 * kl
    assert torch.allclose(loss(student, targets), expected, atol=1e-6)
    only_unlabelled = loss(student, torch.full((4,), NO_LABEL))
    assert torch.allclose(only_unlabelled, 0.7 * kl, atol=1e-6)  # no label term, and no NaN


def test_teacher_view_renormalises_and_resizes():
    student = Preprocessing(resize_size=27, crop_size=24, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    teacher = Preprocessing(resize_size=36, crop_size=32, interpolation="bicubic", mean=(0.485, 0.456, 0.406),
                            std=(0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 24, 24)
    views = teacher_view((pixels - 0.5) / 0.5, student, teacher)
    assert views.shape == (2, 3, 32, 32)
    same = teacher_view((pixels - 0.5) / 0.5, student, student)
    assert torch.equal(same, (pixels - 0.5) / 0.5)
    mean = torch.tensor(teacher.mean).view(1, 3, 1, 1)
    flat = teacher_view(torch.zeros(1, 3, 24, 24), student, teacher)  # grey 0.5 everywhere
    assert torch.allclose(flat, ((0.5 - mean) / torch.tensor(teacher.std).view(1, 3, 1, 1)).expand(1, 3, 32, 32),
                          atol=1e-5)


@pytest.fixture
def teacher_run(tmp_path: Path) -> tuple[Path, Path]:
    data = make_folder(tmp_path / "data", per_class=8)
    teacher = tmp_path / "teacher"
    done = run_cli("train", "--data", str(data), *TEACHER, "--epochs", "1", "--head-epochs", "1",
                   "--no-report", "--out", str(teacher))
    assert done.returncode == 0, done.stderr
    return data, teacher


def test_distill_writes_an_ordinary_run_folder_that_names_its_teacher(teacher_run, tmp_path):
    data, teacher = teacher_run
    unlabeled = make_folder(tmp_path / "unlabeled", per_class=3)
    student = tmp_path / "student"
    args = ["distill", str(teacher), *STUDENT, "--data", str(data), "--unlabeled", str(unlabeled),
            "--epochs", "2", "--head-epochs", "1", "--distill-temperature", "2", "--distill-weight", "0.8",
            "--label-weight", "0.2"]
    done = run_cli(*args, "--out", str(student))
    assert done.returncode == 0, done.stderr
    assert set(p.name for p in student.iterdir() if not p.name.startswith(".")) <= RUN_FILES
    summary = json.loads((student / "summary.json").read_text())
    distilled = summary["distillation"]
    assert distilled["teacher_run"] == str(teacher.resolve()) and distilled["teacher_model"] == TINY_MODEL
    assert distilled["num_unlabeled"] == 9 and distilled["temperature"] == 2.0
    assert distilled["teacher_latency_ms"] > 0 and distilled["student_latency_ms"] > 0
    assert 0.0 <= distilled["teacher_val_top1"] <= 1.0
    assert summary["num_train"] == sum(summary["train_class_counts"]) + 9  # the classes count labelled images
    report = (student / "report.html").read_text(encoding="utf-8")
    assert "id='distillation'" in report and TINY_MODEL in report and str(teacher.resolve()) in report
    assert "teacher logits: 0 cached batches" in done.stdout  # the first run computes every view
    predicted = run_cli("predict", str(student), str(next(data.glob("cat/*.png"))))
    assert predicted.returncode == 0, predicted.stderr
    again = run_cli(*args, "--out", str(tmp_path / "again"))  # the same views: the teacher never runs again
    assert again.returncode == 0, again.stderr
    assert ", 0 computed" in again.stdout
    first, second = (load_file(str(folder / checkpoint.MODEL_FILE)) for folder in (student, tmp_path / "again"))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_killed_distillation_resumes_bit_identical(teacher_run, tmp_path):
    """SIGKILLed mid fine-tuning (its views' logits partly cached) and right after the probe's commit;
    `tlearn train --resume` finishes it with the weights and metrics of an uninterrupted run."""
    data, teacher = teacher_run
    args = [str(teacher), *STUDENT, "--data", str(data), "--deterministic", "--epochs", "2", "--head-epochs", "1",
            "--batch-size", "8", "--lr", "0.01", "--no-report"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    kill_chain(args, ["commit:1", "step:4"], reference, run, command="distill")
    for name in (checkpoint.MODEL_FILE, checkpoint.LAST_FILE, checkpoint.STATE_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    rows = [(run / "metrics.csv").read_text().splitlines(), (reference / "metrics.csv").read_text().splitlines()]
    assert len(rows[0]) == len(rows[1]) == 4
    assert json.loads((run / "summary.json").read_text())["distillation"]["teacher_run"] == str(teacher.resolve())


@pytest.mark.parametrize("case, message", [
    ("other-classes", "was trained on other classes than --data"),
    ("unknown-student", "unknown model 'resnet5O'"),
    ("lbfgs", "--head-solver lbfgs fits the labels alone"),
    ("no-teacher", "teacher run folder not found"),
])
def test_bad_input_is_one_line_exit_2(teacher_run, tmp_path, case, message):
    data, teacher = teacher_run
    student = [*STUDENT]
    if case == "other-classes":
        data = make_folder(tmp_path / "other", classes=("cat", "dog", "owl"), per_class=4)
    if case == "unknown-student":
        student[1] = "resnet5O"
    extra = ["--head-solver", "lbfgs"] if case == "lbfgs" else []
    source = str(tmp_path / "missing") if case == "no-teacher" else str(teacher)
    out = tmp_path / "student"
    done = run_cli("distill", source, *student, "--data", str(data), *extra, "--out", str(out))
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not out.exists() or not any(out.iterdir())
