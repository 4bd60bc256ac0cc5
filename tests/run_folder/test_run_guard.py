"""A run folder is never overwritten, never written by two processes, never silently wrong, and
readable by others (issue 20)."""
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys

import pytest

import tlearn
from tlearn.cli import main
from tlearn.run_folder.guard import LOCK_FILE, RUN_FILES, RUN_FOLDERS

from conftest import TINY_MODEL, make_folder

TRAIN = ["--model", TINY_MODEL, "--weights", "none", "--image-size", "32", "--strategy", "linear-probe",
         "--epochs", "1", "--no-report"]


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    """`tlearn ARGS` in this process (no 5 s of imports per command): its exit code and output."""
    def run(*args):
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture
def train(cli):
    def run(data, out, *extra):
        return cli("train", "--data", data, *TRAIN, "--out", out, *extra)
    return run


def _digests(folder):
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir() if path.is_file()}


def _one_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tlearn: error:") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / "data", per_class=6)


def test_an_out_holding_a_run_is_refused_and_overwrite_clears_only_the_runs_files(data, tmp_path, train):
    run = tmp_path / "run"
    assert train(data, run).returncode == 0
    (run / "report.html").write_text("an older report")  # what an earlier run with a report left
    (run / "export").mkdir()
    (run / "export" / "model.onnx").write_bytes(b"an older export")
    (run / "notes.txt").write_text("the user's own notes")
    before = _digests(run)
    refused = train(data, run)
    assert refused.returncode == 2
    line = _one_line(refused.stderr)
    assert "holds a finished tlearn run" in line and "--overwrite" in line and "--resume" in line
    assert _digests(run) == before  # nothing was touched
    assert train(data, run, "--overwrite").returncode == 0
    assert not (run / "report.html").exists() and not (run / "export").exists()  # no files of two runs
    assert (run / "notes.txt").read_text() == "the user's own notes"
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 1


def test_a_folder_of_the_users_files_is_refused_even_with_overwrite(data, tmp_path, train):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.csv").write_text("the user's own metrics\n")
    for extra in ((), ("--overwrite",)):
        result = train(data, mine, *extra)
        assert result.returncode == 2 and "holds no tlearn run (metrics.csv)" in _one_line(result.stderr)
    assert (mine / "metrics.csv").read_text() == "the user's own metrics\n"


def test_an_unfinished_run_points_to_resume(data, tmp_path, train):
    run = tmp_path / "run"
    assert train(data, run).returncode == 0
    (run / "summary.json").unlink()
    result = train(data, run)
    assert result.returncode == 2 and f"tlearn train --resume {run}" in _one_line(result.stderr)


def test_python_fit_refuses_a_run_too(data, tmp_path):
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    tlearn.fit(model, str(data), out=tmp_path / "run", strategy="linear-probe", report=False)
    with pytest.raises(tlearn.UserError, match="holds a finished tlearn run"):
        tlearn.fit(model, str(data), out=tmp_path / "run", strategy="linear-probe", report=False)


HOLDER = """
import sys, time
from tlearn.run_folder.guard import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_killed_holder_blocks_nobody(data, tmp_path, train, cli):
    run = tmp_path / "run"
    assert train(data, run).returncode == 0
    (run / "summary.json").unlink()  # an unfinished run, which --resume would write into
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["train", "--resume", str(run)], ["export", str(run)],
                        ["train", "--data", str(data), *TRAIN, "--out", str(run), "--overwrite"]):
            result = cli(*command)
            assert result.returncode == 2, command
            assert f"in use by another tlearn process (pid {holder.pid})" in _one_line(result.stderr)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_FILE).is_file()  # left behind by the killed process, and no obstacle:
    assert cli("train", "--resume", run).returncode == 0


def test_two_trainings_on_one_out_at_once_one_wins_one_is_refused(data, tmp_path):
    run = tmp_path / "race"
    command = [sys.executable, "-m", "tlearn", "train", "--data", str(data), *TRAIN, "--out", str(run)]
    racers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((racer.wait(timeout=300), racer.stderr.read()) for racer in racers)
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    line = _one_line(outcomes[1][1])
    assert "in use by another tlearn process" in line or "holds a finished tlearn run" in line
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 1


def test_a_full_run_writes_only_files_overwrite_knows(tmp_path, cli):
    """--overwrite deletes RUN_FILES and RUN_FOLDERS: every file a run writes must be on that list."""
    data = make_folder(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    result = cli("train", "--data", data, "--model", TINY_MODEL, "--weights", "none", "--image-size", "32",
                     "--strategy", "two-stage", "--head-epochs", "1", "--epochs", "1", "--lr", "find",
                     "--tensorboard", "--out", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    assert cli("export", run).returncode == 0
    assert cli("export", run, "--format", "torchscript").returncode == 0
    for entry in os.listdir(run):
        assert entry == LOCK_FILE or entry in RUN_FILES or entry in RUN_FOLDERS, entry
    assert set(os.listdir(run / "export")) <= set(RUN_FOLDERS["export"])


def _fit_two_epochs_best_first(data, run):
    """A fine-tuned run whose best epoch (1) is not its last (2): at a vanishing LR the validation
    figures never improve on the first epoch's."""
    model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
    tlearn.fit(model, str(data), out=run, strategy="finetune", epochs=2, lr=1e-12, report=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 1 and summary["epochs_completed"] == 2


def test_a_deleted_best_model_is_an_error_never_the_last_epoch(data, tmp_path, cli):
    run = tmp_path / "run"
    _fit_two_epochs_best_first(data, run)
    (run / "model.safetensors").unlink()
    image = next((data / "cat").iterdir())
    for command in (["eval", str(run), "--data", str(data)], ["predict", str(run), str(image)],
                    ["export", str(run)]):
        result = cli(*command)
        assert result.returncode == 2, command
        line = _one_line(result.stderr)
        assert "model.safetensors is missing" in line and "holds epoch 2, not its best epoch (1)" in line


def test_the_committed_state_stands_in_only_when_it_is_the_best_epoch(data, tmp_path, train, cli):
    run = tmp_path / "run"
    assert train(data, run).returncode == 0  # one L-BFGS solve: the committed epoch is the best
    expected = tlearn.load(run).predict(next((data / "dog").iterdir()))[0]
    (run / "model.safetensors").unlink()
    result = cli("predict", run, next((data / "dog").iterdir()))
    assert result.returncode == 0
    assert "loading epoch 1 from train_state.safetensors" in result.stdout and "best epoch" in result.stdout
    assert f"{expected['prob']:.4f}" in result.stdout


def test_a_failed_export_parity_check_is_on_stderr(data, tmp_path, monkeypatch, train, cli):
    from tlearn.infer import export

    run = tmp_path / "run"
    assert train(data, run).returncode == 0
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference can pass
    result = cli("export", run)
    assert result.returncode == 1
    assert "FAILED" in result.stderr and "FAILED" not in result.stdout and "parity" in result.stderr


def test_written_files_get_the_umask_mode_and_replaced_files_keep_theirs(data, tmp_path):
    previous = os.umask(0o027)  # a group-readable umask: mkstemp alone would give 0600
    try:
        run = tmp_path / "run"
        model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
        tlearn.fit(model, str(data), out=run, strategy="linear-probe", report=True)
        assert main(["export", str(run)]) == 0
        written = [p for folder in (run, tmp_path / "cache") for p in folder.rglob("*") if p.is_file()]
        assert len(written) > 10
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
        preds = tmp_path / "preds.csv"
        preds.write_text("an older prediction\n")
        preds.chmod(0o644)
        assert main(["predict", str(run), str(data / "cat"), "--output", str(preds)]) == 0
        assert stat.S_IMODE(preds.stat().st_mode) == 0o644 and "cat" in preds.read_text()
    finally:
        os.umask(previous)


def test_one_image_per_class_is_one_line_before_any_folder(tmp_path, train):
    data = make_folder(tmp_path / "data", per_class=1)
    run = tmp_path / "run"
    result = train(data, run)
    assert result.returncode == 2 and "no validation images" in _one_line(result.stderr)
    assert not run.exists()


def test_eval_on_the_runs_own_folder_says_how_many_images_it_trained_on(data, tmp_path, train, cli):
    run = tmp_path / "run"
    assert train(data, run, "--val-split", "0.25").returncode == 0
    num_train = json.loads((run / "summary.json").read_text())["num_train"]
    result = cli("eval", run, "--data", data, "--json")
    assert json.loads(result.stdout)["train_overlap"] == num_train
    assert f"{num_train} of 18 evaluated images are in the run's training split" in result.stderr
    assert "--split val" in result.stderr
    result = cli("eval", run, "--data", data, "--split", "val", "--json")
    assert "train_overlap" not in json.loads(result.stdout) and "training split" not in result.stderr


def test_fit_without_out_writes_a_run_folder_the_cli_way(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the same second: two folders, never one run over the other
        model = tlearn.create_model(TINY_MODEL, 3, weights="none", image_size=32)
        tlearn.fit(model, str(data), strategy="linear-probe", report=False)
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert tlearn.load(run).class_names == ["cat", "dog", "fox"]
