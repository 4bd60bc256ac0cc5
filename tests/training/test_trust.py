"""What users trust without checking: full disks, shared caches, their own freezing, honest errors."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tlearn
import tlearn.files as files
from tlearn.cli import main
from tlearn.errors import ModelError, WeightsDownloadError
from tlearn.run_folder import checkpoint
from tlearn.training.strategy import freeze, parameter_counts

from conftest import TINY_MODEL, make_folder

TINY = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--batch-size", "4", "--workers", "0",
        "--no-report"]


def _fail_writes(monkeypatch, name: str, error: int, after: int = 0):
    """Every write of `name` after the first `after` ones fails with `error`, as a full disk would."""
    real, seen = files.atomic_write_with, []

    def write(path, fill):
        if os.path.basename(path) == name:
            seen.append(path)
            if len(seen) > after:
                raise OSError(error, os.strerror(error))
        return real(path, fill)

    monkeypatch.setattr(files, "atomic_write_with", write)


def test_disk_full_during_a_checkpoint_is_one_line_and_resumable(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    _fail_writes(monkeypatch, checkpoint.STATE_FILE, errno.ENOSPC, after=1)
    code = main(["train", "--data", str(data), *TINY, "--strategy", "finetune", "--epochs", "3", "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "No space left on device" in err[0] and f"tlearn train --resume {run}" in err[0]
    assert len(checkpoint.read_progress(run)["rows"]) == 1  # epoch 1 committed and intact
    assert not list(run.glob(".*.tmp"))  # the failed write left no temporary file behind
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 3


def test_read_only_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data", per_class=4)
    _fail_writes(monkeypatch, "config.yaml", errno.EROFS)
    code = main(["train", "--data", str(data), *TINY, "--strategy", "finetune", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0] and "--resume" not in err[0], err


def test_unwritable_cache_is_a_warning_and_training_goes_on(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be made under a file")
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    summary = tlearn.fit(model, str(make_folder(tmp_path / "data", per_class=6)), out=tmp_path / "run",
                         strategy="linear-probe",
                         epochs=1, cache_dir=str(blocker / "cache"), report=False)
    warnings = [r.message for r in caplog.records
                if r.levelname == "WARNING" and r.message.startswith("cannot write the feature cache")]
    assert len(warnings) == 1 and summary["stages"][0]["cached_features"]  # one warning for train and val
    assert summary["val_top1"] > 0


def test_two_runs_share_one_cache_at_the_same_time(tmp_path):
    data = make_folder(tmp_path / "data", per_class=10)
    cache = tmp_path / "cache"
    env = {**os.environ, "TLEARN_CACHE": str(cache)}
    runs = [tmp_path / f"run{i}" for i in range(2)]
    processes = [subprocess.Popen([sys.executable, "-m", "tlearn", "train", "--data", str(data), *TINY,
                                   "--strategy", "linear-probe", "--epochs", "1", "--out", str(run)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for run in runs]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    stored = sorted((cache / "features").glob("*.npy"))
    assert len(stored) == 2 and not list((cache / "features").glob(".*"))  # train + val, no leftovers
    for path in stored:
        assert np.isfinite(np.load(path)).all()
    a, b = (load_file(str(run / "model.safetensors")) for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same features gave the same head


def test_as_is_trains_exactly_what_the_user_left_trainable(image_folder, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    freeze(model, unfreeze_last=2)
    given = parameter_counts(model)[0]
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    summary = tlearn.fit(model, str(image_folder), out=tmp_path / "run", strategy="as-is", epochs=1,
                         report=False)
    assert summary["stages"][0]["name"] == "as-is" and summary["stages"][0]["trainable_params"] == given
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if n in frozen_before)


def test_a_strategy_that_resets_the_users_flags_says_so(image_folder, tmp_path, caplog):
    caplog.set_level("INFO", logger="tlearn")
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    freeze(model, unfreeze_last=2)
    summary = tlearn.fit(model, str(image_folder), out=tmp_path / "run", strategy="linear-probe", epochs=1,
                         report=False)
    assert any("strategy='as-is' keeps" in line for line in caplog.messages)
    assert summary["stages"][0]["trainable_params"] < sum(p.numel() for p in model.parameters())


def test_unfreeze_last_from_the_command_line_trains_the_last_blocks_on_images(image_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(image_folder), *TINY, "--strategy", "linear-probe", "--epochs", "1",
                 "--unfreeze-last", "1", "--out", str(run)]) == 0
    stage = json.loads((run / "summary.json").read_text())["stages"][0]
    head_only = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    freeze(head_only)
    assert stage["trainable_params"] > parameter_counts(head_only)[0] and not stage["cached_features"]


def test_a_constructor_error_is_not_called_a_failed_download(monkeypatch):
    import timm

    real = timm.create_model

    def broken(name, pretrained=False, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'drop_rat'")

    monkeypatch.setattr(timm, "create_model", broken)
    with pytest.raises(ModelError, match="could not build timm:resnet18 .*drop_rat") as caught:
        tlearn.create_model("timm:resnet18", 3, weights="default")
    assert "download" not in str(caught.value)

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsDownloadError, match="could not download"):
        tlearn.create_model("timm:test_resnet", 3, weights="default")
    with pytest.raises(ModelError, match="could not build resnet18 .*bogus"):
        tlearn.create_model("resnet18", 3, weights="none", build_kwargs={"bogus": 1})
