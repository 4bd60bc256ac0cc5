"""The LR finder: the sweep's curve, the divergence stop, exact restoration, `tlearn lr-find`,
and `train --lr find` with resume."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import KILLER, TINY_MODEL, make_folder, run_cli

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32"]


def _model_and_stage(batches: int = 12, batch_size: int = 4):
    """test_resnet at 32 px on random images of 3 classes, as a fine-tuning stage's data."""
    from tlearn.models.factory import create_model
    from tlearn.runtime import setup_runtime
    from tlearn.training.stage_data import StageData

    torch.manual_seed(0)
    model = create_model(TINY_MODEL, 3, "none", image_size=32)
    images = torch.randn(batches * batch_size, 3, 32, 32)
    labels = torch.arange(batches * batch_size) % 3
    images += labels.view(-1, 1, 1, 1).float()  # learnable: the class shifts the pixels
    generator = torch.Generator()
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, generator=generator)
    runtime = setup_runtime("cpu")
    stage_data = StageData(loader, loader, model, lambda x: x, False, generator)
    return model, stage_data, runtime


def _config(**changes):
    from tlearn.config import TrainConfig

    return TrainConfig(strategy="finetune", **changes)


def test_sweep_rises_exponentially_and_restores_weights_and_rng():
    from tlearn.training.lr_finder import find_stage_lr

    model, stage_data, runtime = _model_and_stage()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    finding = find_stage_lr(model, stage_data, _config(), runtime, nn.CrossEntropyLoss())
    assert torch.equal(torch.rand(3), expected_draw)  # the run's random stream is untouched
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm buffers included
    assert all(p.grad is None for p in model.parameters())
    lrs = np.array(finding.lrs)
    assert lrs[0] == pytest.approx(1e-7)
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0]) and ratios[0] > 1  # a geometric sweep
    if not finding.diverged:  # all 12 steps: the last one reaches the end LR
        assert len(lrs) == 12 and lrs[-1] == pytest.approx(10.0)
    assert lrs[0] <= finding.suggestion <= lrs[-1]
    assert finding.suggestion == finding.lrs[finding.suggestion_index]
    # the smoothing is fastai's: the debiased moving average of the losses (beta 0.98)
    average = 0.0
    for step, (loss, smooth) in enumerate(zip(finding.losses, finding.smoothed)):
        average = 0.98 * average + 0.02 * loss
        assert smooth == pytest.approx(average / (1 - 0.98 ** (step + 1)))


def test_sweep_stops_when_the_loss_diverges():
    from tlearn.training.lr_finder import SweepSettings, find_stage_lr

    model, stage_data, runtime = _model_and_stage(batches=30)
    finding = find_stage_lr(model, stage_data, _config(optimizer="sgd"), runtime, nn.CrossEntropyLoss(),
                            settings=SweepSettings(end_lr=1e12))
    assert finding.diverged and len(finding.lrs) < 30  # stopped early: 4x the minimum, or a non-finite loss
    assert finding.lrs[0] <= finding.suggestion <= finding.lrs[-1]


def test_valley_is_fastais_rule_on_the_longest_fall():
    from tlearn.training.lr_finder import valley

    # 40 points: flat, a fall over indices 10-29, then a blow-up. fastai's `valley` finds the
    # longest falling run (from index 9: the last flat point, to 29) and, in its code, steps
    # int(length/3) + int(length/6) into it (the first tenth and last 5 points left out).
    losses = [2.0] * 10 + [2.0 - 0.05 * i for i in range(1, 21)] + [1.5 + i for i in range(10)]
    assert valley(losses) == 18
    assert valley([5.0, 4.0, 3.0, 2.0, 1.0, 0.0]) == 1  # too short to leave points out
    assert valley([1.0]) == 0


def test_lr_find_command_linear_probe_writes_csv_and_plot(tmp_path):
    data = make_folder(tmp_path / "images", per_class=12, split_dirs=True)
    out = tmp_path / "finder"
    result = run_cli("lr-find", "--data", str(data), *TINY, "--batch-size", "2", "--strategy", "linear-probe",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "suggested LR" in result.stdout and "valley" in result.stdout
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    # one epoch: 27 images / 2, the lone last image dropped
    assert list(rows[0]) == ["lr", "loss", "smoothed_loss"] and len(rows) == 13
    lrs = [float(row["lr"]) for row in rows]
    suggested = float(result.stdout.split("suggested LR ")[1].split()[0])
    assert lrs[0] <= suggested <= lrs[-1]
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"


def test_train_lr_find_is_recorded_and_not_rerun_on_resume(tmp_path):
    data = make_folder(tmp_path / "images", per_class=8, split_dirs=True)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), *TINY, "--batch-size", "4", "--strategy", "two-stage", "--epochs", "2",
            "--lr", "find", "--no-report", "--out", str(run)]
    # killed right after the second commit: the probe's solve, then the first fine-tuning epoch
    killed = subprocess.run([sys.executable, str(KILLER), "commit:2", *args], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "LR finder: suggested LR" in killed.stdout
    found = yaml.safe_load((run / "config.yaml").read_text())["resolved"]["lr_found"]
    assert found["rule"] == "valley" and found["stage"] == "finetune" and found["lr"] > 0
    assert (run / "lr_find.csv").is_file() and (run / "lr_find.png").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == "find"
    resumed = run_cli("train", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "LR finder: suggested" not in resumed.stdout  # not swept again
    assert "found before the resume" in resumed.stdout and f"{found['lr']:.2e}" in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["resolved"]["lr_found"] == found


@pytest.mark.parametrize("args,message", [
    (["train", "--lr", "fast"], "must be a number or find, got 'fast'"),
    (["train", "--lr", "-1"], "--lr must be above 0"),
    (["lr-find", "--strategy", "two-stage"], "invalid choice"),
])
def test_bad_lr_values_are_one_line_and_exit_2(args, message, tmp_path):
    data = make_folder(tmp_path / "images", per_class=2)
    command = [args[0], "--data", str(data), *TINY, *args[1:]]
    result = run_cli(*command, "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_under_gradual_unfreezing_the_sweep_trains_what_the_first_epoch_trains(image_folder, tmp_path, monkeypatch):
    import tlearn
    from tlearn.models.block_groups import block_groups
    from tlearn.training import lr_finder

    swept = {}
    real = lr_finder.find_stage_lr

    def spy(model, *args, **kwargs):
        swept["names"] = {name for name, p in model.named_parameters() if p.requires_grad}
        return real(model, *args, **kwargs)

    monkeypatch.setattr(lr_finder, "find_stage_lr", spy)
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    tlearn.fit(model, str(image_folder), out=tmp_path / "run", strategy="finetune", epochs=1, unfreeze="gradual",
               lr="find", val_split=0.25, report=False)
    top = set(block_groups(model)[-1].parameter_names)
    head = {name for name, _ in model.named_parameters() if name.startswith("head.")}
    assert top and swept["names"] == top | head


def test_the_sweep_trains_as_the_run_does_mixed_batches_and_accumulated_steps(tmp_path, monkeypatch):
    """--lr find with --mixup and --accumulate 2: the sweep's batches are mixed, and its optimiser steps
    come after every second batch (18 training images in batches of 3: 3 groups of 2, 3 steps)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import tlearn
    from tlearn.training import lr_finder
    from tlearn.training.callbacks.mixing import BatchMixer

    events, sweeping = [], []
    real_mix, real_find = BatchMixer.__call__, lr_finder.find_stage_lr

    def mix(self, images, targets):
        if sweeping:
            events.append("mix")
        return real_mix(self, images, targets)

    def find(model, *args, **kwargs):
        hook = model.register_forward_pre_hook(lambda module, inputs: events.append("batch") if sweeping else None)
        sweeping.append(True)
        try:
            return real_find(model, *args, **kwargs)
        finally:
            sweeping.clear()
            hook.remove()

    monkeypatch.setattr(BatchMixer, "__call__", mix)
    monkeypatch.setattr(lr_finder, "find_stage_lr", find)
    step_hook = register_optimizer_step_post_hook(
        lambda optimizer, args, kwargs: events.append("step") if sweeping else None)
    try:
        data = make_folder(tmp_path / "images", per_class=8, split_dirs=True)  # 6 train images a class
        model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
        tlearn.fit(model, str(data), out=tmp_path / "run", strategy="finetune", epochs=1, lr="find", mixup=0.2,
                   accumulate=2, batch_size=3, workers=0, report=False)
    finally:
        step_hook.remove()
    assert events == ["mix", "batch", "mix", "batch", "step"] * 3
    rows = list(csv.DictReader((tmp_path / "run" / "lr_find.csv").open()))
    assert len(rows) == 3  # one row per optimiser step, its loss the group's
