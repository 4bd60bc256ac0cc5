"""`tlearn predict --output F.csv` streams its rows: killed midway, the file holds the rows done so far
as valid CSV, and `--resume` completes it to what an uninterrupted prediction writes."""
import csv
import signal
import subprocess
import sys

import pytest

from tlearn.cli import main

from conftest import make_folder, train_tiny

# SIGKILL (no cleanup at all) right after the second batch's rows were written
KILL_AFTER_TWO_BATCHES = """
import os, signal, sys
import tlearn.infer.streaming as streaming
from tlearn.cli import main
real, writes = streaming.CsvStream.write, []
def write(self, rows):
    real(self, rows)
    writes.append(len(rows))
    if len(writes) == 3:  # the header, then two batches
        os.kill(os.getpid(), signal.SIGKILL)
streaming.CsvStream.write = write
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    data = make_folder(root / "data", per_class=6, split_dirs=True)
    _, run = train_tiny(root, data, strategy="linear-probe", epochs=1, report=False)
    return run, data / "train"


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_killed_prediction_leaves_valid_rows_and_resume_completes_it(run_and_images, tmp_path, engine):
    run, images = run_and_images
    flags = [str(run), str(images), "--top-k", "2", "--batch-size", "3", "--engine", engine]
    whole, streamed = tmp_path / "whole.csv", tmp_path / "streamed.csv"
    assert main(["predict", *flags, "--output", str(whole)]) == 0
    expected = list(csv.reader(whole.open()))
    assert len(expected) == 1 + 12  # 3 classes x 4 training images
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_BATCHES, "predict", *flags, "--output",
                             str(streamed)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rows = list(csv.reader(streamed.open()))
    assert rows == expected[:1 + 6]  # the header and two batches of three, every line whole
    with streamed.open("a") as file:
        file.write(expected[7][0][:5])  # as if the kill had cut the next line short
    assert main(["predict", *flags, "--output", str(streamed), "--resume"]) == 0
    resumed = list(csv.reader(streamed.open()))
    assert [row[0] for row in resumed] == [row[0] for row in expected]
    for row, reference in zip(resumed[1:], expected[1:]):
        assert row[1::2] == reference[1::2]  # labels
        assert [float(p) for p in row[2::2]] == pytest.approx([float(p) for p in reference[2::2]], abs=1e-4)


def test_resume_refuses_another_prediction_and_needs_a_csv(run_and_images, tmp_path, capsys):
    run, images = run_and_images
    output = tmp_path / "other.csv"
    output.write_text("path,label,prob\n")
    assert main(["predict", str(run), str(images), "--top-k", "2", "--output", str(output), "--resume"]) == 2
    assert "other columns" in capsys.readouterr().err
    assert main(["predict", str(run), str(images), "--resume"]) == 2
    assert "--resume continues the rows of --output F.csv" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_progress_bar_counts_every_file_on_stderr_only_for_many_files(run_and_images, tmp_path, capsys,
                                                                      monkeypatch, engine):
    run, images = run_and_images
    (images / "broken.jpg").write_bytes(b"not an image")  # an unreadable file is counted too
    try:
        flags = [str(run), str(images), "--batch-size", "5", "--engine", engine]
        assert main(["predict", *flags]) == 0
        assert "img/s" not in capsys.readouterr().err  # few files, stderr not a terminal: no bar
        monkeypatch.setattr("tlearn.cli._run_commands.PROGRESS_MIN_FILES", 10)
        assert main(["predict", *flags]) == 0
        out, err = capsys.readouterr()
        assert "13/13" in err and "img/s" in err, err
        assert "img/s" not in out
    finally:
        (images / "broken.jpg").unlink()
