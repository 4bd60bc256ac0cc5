"""Imbalanced classes: --balance reweight | resample | logit-adjust, balanced accuracy, macro-F1, the warning."""
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tlearn
from tlearn.cli import main
from tlearn.features import head_solver
from tlearn.metrics.classification import ClassificationMeter
from tlearn.metrics.imbalance import warn_if_imbalanced
from tlearn.run_folder import checkpoint
from tlearn.training._balance import Balance, BalancedSampler, LogitAdjustedLoss

from conftest import KILLER, TINY_MODEL, write_image

COUNTS = {"cat": 22, "dog": 6, "fox": 2}  # training images per class: 11x
TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--no-report"]


def make_imbalanced(root: Path, counts=COUNTS, val_per_class: int = 2) -> Path:
    """root/train/<class> with `counts` images, root/val/<class> with `val_per_class` each."""
    for label, (name, count) in enumerate(counts.items()):
        for i in range(count + val_per_class):
            split = "val" if i < val_per_class else "train"
            write_image(root / split / name / f"{i}.png", label, size=(36, 28), seed=label * 1000 + i)
    return root


def test_balanced_accuracy_and_macro_f1_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    truth = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    predicted = np.array([0, 0, 0, 0, 1, 4, 1, 1, 0, 2, 0, 1])  # class 4 predicted, never true
    meter = ClassificationMeter(5)
    meter.update(torch.nn.functional.one_hot(torch.tensor(predicted), 5).float(), torch.tensor(truth))
    result = meter.result()
    assert result.balanced_acc == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-12)
    assert result.f1_macro == pytest.approx(f1_score(truth, predicted, average="macro"), abs=1e-12)
    assert result.top1 == pytest.approx(7 / 12)
    assert result.balanced_acc == pytest.approx((4 / 6 + 2 / 3 + 1 / 2 + 0) / 4)  # mean recall, 4 true classes


def test_reweight_weights_are_inverse_to_class_frequency():
    labels = [0] * 80 + [1] * 15 + [2] * 5
    balance = Balance.from_labels("reweight", labels, 3)
    weights = balance.loss_weights()
    assert torch.allclose(weights, torch.tensor([100 / (3 * 80), 100 / (3 * 15), 100 / (3 * 5)]))
    assert float(weights[torch.tensor(labels)].mean()) == pytest.approx(1.0)  # the loss keeps its scale
    loss = balance.training_loss(0.0, torch.device("cpu"), sampled=False)
    assert torch.equal(loss.weight, weights)
    # resample weights only the full-batch solve; its sampled batches use the plain loss
    assert Balance.from_labels("resample", labels, 3).training_loss(0.0, torch.device("cpu"), sampled=True).weight \
        is None
    assert Balance.from_labels("none", labels, 3).loss_weights() is None
    assert Balance.from_labels("logit-adjust", labels, 3).loss_weights() is None


def test_weighted_lbfgs_solve_equals_the_solve_on_duplicated_images():
    """reweight (and resample on cached features) = training on a set where each image of class c
    appears w_c times: the weighted loss is the balanced sampler's expected loss."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    y = torch.tensor([0] * 20 + [1] * 6 + [2] * 4)
    x[y == 1] += 1.0
    x[y == 2] -= 1.0
    multiplicity = torch.tensor([1, 3, 5])
    heads = [torch.nn.Linear(6, 3).double() for _ in range(2)]
    head_solver.fit_linear_head_lbfgs(heads[0], x, y, x, y, grid=(1e-2,), fast=False,
                                      objective=head_solver.HeadObjective(class_weights=multiplicity.double()))
    repeat = multiplicity[y]
    head_solver.fit_linear_head_lbfgs(heads[1], x.repeat_interleave(repeat, 0), y.repeat_interleave(repeat), x, y,
                                      grid=(1e-2,), fast=False)
    assert torch.allclose(heads[0].weight, heads[1].weight, atol=1e-5)
    assert torch.allclose(heads[0].bias, heads[1].bias, atol=1e-5)


def test_resample_draws_balanced_epochs_deterministic_per_seed_and_epoch():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    sampler = BalancedSampler(labels, seed=5)
    totals = torch.zeros(3)
    draws = {}
    for epoch in range(60):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == 100
        draws[epoch] = drawn
        totals += torch.bincount(torch.tensor(labels)[drawn], minlength=3)
    assert torch.allclose(totals / totals.sum(), torch.full((3,), 1 / 3), atol=0.02)  # in expectation
    again = BalancedSampler(labels, seed=5)
    again.set_epoch(7)
    assert list(again) == draws[7]  # (seed, epoch) alone decides: a resumed run repeats it
    assert draws[7] != draws[8]
    other = BalancedSampler(labels, seed=6)
    other.set_epoch(7)
    assert list(other) != draws[7]
    shards = [BalancedSampler(labels, seed=5, num_replicas=2, rank=rank) for rank in (0, 1)]
    for shard in shards:
        shard.set_epoch(7)
    rank0, rank1 = (list(shard) for shard in shards)
    assert len(rank0) == len(rank1) == 50  # torchrun: disjoint shards of the same balanced draw
    assert [i for pair in zip(rank0, rank1) for i in pair] == draws[7]


def test_logit_adjusted_loss_is_the_plain_loss_of_the_unshifted_logits():
    balance = Balance.from_labels("logit-adjust", [0] * 6 + [1] * 3 + [2], 3)
    shift = balance.logit_shift()
    assert torch.allclose(shift, -torch.log(torch.tensor([0.6, 0.3, 0.1])))
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 2, 0])
    loss = balance.training_loss(0.0, torch.device("cpu"), sampled=False)
    assert isinstance(loss, LogitAdjustedLoss)
    plain = torch.nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(loss(logits + shift, targets), plain)


def _train(data: Path, out: Path, balance: str, cache: Path, **train) -> dict:
    summary, _ = tlearn.train(tlearn.RunConfig(
        data=tlearn.DataConfig(source=str(data), image_size=32, batch_size=4, workers=0),
        model=tlearn.ModelConfig(name=TINY_MODEL, weights="none"),
        train=tlearn.TrainConfig(strategy="linear-probe", balance=balance, cache_dir=str(cache), **train)), out)
    return summary


def test_logit_adjust_shifts_the_saved_bias_and_every_consumer_sees_it(tmp_path, monkeypatch, caplog):
    data = make_imbalanced(tmp_path / "data")
    monkeypatch.setattr(head_solver, "L2_GRID", (1e-3,))  # one L2 strength: both runs solve the same problem
    caplog.set_level(logging.WARNING, logger="tlearn")
    _train(data, tmp_path / "plain", "none", tmp_path / "cache", report=False)
    assert "imbalanced classes in the training split: cat has 22 images, fox 2 (11x)" in caplog.text
    adjusted = _train(data, tmp_path / "adjusted", "logit-adjust", tmp_path / "cache")
    priors = torch.tensor([22.0, 6.0, 2.0], dtype=torch.float64) / 30
    a, b = (load_file(str(tmp_path / run / "model.safetensors")) for run in ("plain", "adjusted"))
    assert torch.equal(a["head.weight"], b["head.weight"])
    assert torch.allclose((b["head.bias"] - a["head.bias"]).double(), -priors.log(), atol=1e-5)
    info = json.loads((tmp_path / "adjusted" / "model.json").read_text())["balance"]
    assert info["mode"] == "logit-adjust" and info["class_counts"] == [22, 6, 2]
    assert info["priors"] == pytest.approx(priors.tolist())
    assert adjusted["balance"] == "logit-adjust" and adjusted["train_imbalance_ratio"] == 11.0
    for key in ("val_balanced_acc", "val_f1_macro"):
        assert 0.0 <= adjusted[key] <= 1.0 and key in adjusted["stages"][0]
    page = (tmp_path / "adjusted" / "report.html").read_text()
    assert "balanced accuracy" in page and "Warning: the training split is imbalanced" in page

    # predict and the exported ONNX file apply the shift with no code of their own
    images = [p for p in sorted((data / "val").rglob("*.png"))]
    plain_model, trained = tlearn.load(tmp_path / "plain"), tlearn.load(tmp_path / "adjusted")
    batch = torch.stack([trained.prepare(p) for p in images])
    with torch.inference_mode():
        expected = plain_model.model(batch).double() - priors.log()
    probs = [row["probs"] for row in trained.predict(images, top_k=3)]
    labels = [row["labels"] for row in trained.predict(images, top_k=3)]
    reference = (expected / trained.model.info.temperature).softmax(1)  # calibrated (calibration.py)
    for row_probs, row_labels, ref in zip(probs, labels, reference):
        got = {name: p for name, p in zip(row_labels, row_probs)}
        assert [got[n] for n in ("cat", "dog", "fox")] == pytest.approx(ref.tolist(), abs=1e-5)
    assert main(["export", str(tmp_path / "adjusted"), "--format", "onnx"]) == 0
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "adjusted" / "export" / "model.onnx"))
    onnx_logits = session.run(None, {"images": batch.numpy()})[0]
    assert np.allclose(onnx_logits, expected.numpy(), atol=1e-4)
    sidecar = json.loads((tmp_path / "adjusted" / "export" / "model.onnx.json").read_text())
    assert sidecar["balance"]["mode"] == "logit-adjust"


def test_eval_json_reports_balanced_accuracy_and_warns_at_10x(tmp_path, capsys):
    data = make_imbalanced(tmp_path / "data")
    _train(data, tmp_path / "run", "reweight", tmp_path / "cache", report=False)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(data / "train"), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout is the JSON object alone; the warning is on stderr
    assert {"top1", "balanced_acc", "f1_macro"} <= set(result) and result["imbalance_ratio"] == 11.0
    assert "warning: imbalanced classes in the evaluation data" in captured.err
    assert main(["eval", str(tmp_path / "run"), "--data", str(data / "val")]) == 0  # balanced: no warning
    shown = capsys.readouterr().out
    assert "balanced accuracy" in shown and "macro-F1" in shown and "imbalanced" not in shown


def test_warning_threshold_is_10x(caplog):
    caplog.set_level(logging.WARNING, logger="tlearn")
    assert not warn_if_imbalanced([90, 10], ["a", "b"], "x")  # 9x
    assert not caplog.text
    assert warn_if_imbalanced([100, 10, 50], ["a", "b", "c"], "x")  # 10x
    assert "a has 100 images, b 10 (10x)" in caplog.text





@pytest.mark.parametrize("stage_args", [
    ["--strategy", "finetune", "--epochs", "2"],  # images through the whole model
    ["--strategy", "linear-probe", "--head-solver", "sgd", "--epochs", "2"],  # cached features, mini-batch head
])
def test_resample_resumes_bit_identical(tmp_path, stage_args):
    """Kill mid-epoch 2 and resume: the balanced draw of each epoch depends on (seed, epoch) only."""
    data = make_imbalanced(tmp_path / "data")
    args = ["train", "--data", str(data), *TINY, "--deterministic", "--seed", "3", "--balance", "resample",
            *stage_args]

    def tlearn_cli(event: str, *more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(KILLER), event, *more], capture_output=True, text=True,
                              timeout=300, check=False)

    reference, run = tmp_path / "reference", tmp_path / "run"
    done = tlearn_cli("none:0", *args, "--out", str(reference), "--cache-dir", str(tmp_path / "c1"))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tlearn_cli("step:10", *args, "--out", str(run), "--cache-dir", str(tmp_path / "c2"))  # 8 steps an epoch
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(checkpoint.read_progress(run)["rows"]) == 1
    resumed = tlearn_cli("none:0", "train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in (checkpoint.LAST_FILE, checkpoint.MODEL_FILE):
        a, b = load_file(str(reference / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
