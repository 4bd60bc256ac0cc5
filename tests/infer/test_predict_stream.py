"""`tlearn predict --output F.csv|F.json` streams its rows: killed midway, the file holds the rows done so
far as a valid file, and `--resume` completes it to what an uninterrupted prediction writes."""
import csv
import json
import shutil
import signal
import subprocess
import sys

import pytest

from tlearn.cli import main

from conftest import KILLER, make_folder, train_tiny


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    data = make_folder(root / "data", per_class=6, split_dirs=True)
    _, run = train_tiny(root, data, strategy="linear-probe", epochs=1, report=False)
    return run, data / "train"


def _kill_after_two_batches(flags: list[str], output) -> None:
    """A real SIGKILL (kill_points.py) right after the second batch went into the file."""
    killed = subprocess.run([sys.executable, str(KILLER), "rows:2", "predict", *flags, "--output", str(output)],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_killed_prediction_leaves_valid_rows_and_resume_completes_it(run_and_images, tmp_path, engine):
    run, images = run_and_images
    flags = [str(run), str(images), "--top-k", "2", "--batch-size", "3", "--engine", engine]
    whole, streamed = tmp_path / "whole.csv", tmp_path / "streamed.csv"
    assert main(["predict", *flags, "--output", str(whole)]) == 0
    expected = list(csv.reader(whole.open()))
    assert len(expected) == 1 + 12  # 3 classes x 4 training images
    _kill_after_two_batches(flags, streamed)
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


def _assert_same_predictions(records: list[dict], expected: list[dict]) -> None:
    assert [record["path"] for record in records] == [record["path"] for record in expected]
    for record, reference in zip(records, expected):
        assert [p["label"] for p in record["predictions"]] == [p["label"] for p in reference["predictions"]]
        assert [p["prob"] for p in record["predictions"]] == pytest.approx(
            [p["prob"] for p in reference["predictions"]], abs=1e-5)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_a_killed_json_prediction_is_a_valid_document_and_resume_completes_it(run_and_images, tmp_path, engine):
    run, train_images = run_and_images
    images = tmp_path / "images"
    shutil.copytree(train_images, images)
    (images / "cat" / "broken.jpg").write_bytes(b"not an image")  # the 5th file: in the second batch
    flags = [str(images), "--top-k", "2", "--batch-size", "3", "--engine", engine]
    whole, streamed = tmp_path / "whole.json", tmp_path / "streamed.json"
    assert main(["predict", str(run), *flags, "--output", str(whole)]) == 0
    expected = json.loads(whole.read_text())
    assert len(expected["predictions"]) == 12 and len(expected["unreadable"]) == 1
    _kill_after_two_batches([str(run), *flags], streamed)
    text = streamed.read_text()
    document = json.loads(text)  # valid, and in the form an uninterrupted prediction writes
    assert text == json.dumps(document, indent=2, ensure_ascii=False)
    assert document["unreadable"] == expected["unreadable"]
    done = len(document["predictions"])
    assert done == (5 if engine == "onnx" else 6)  # the engine batches files, eager PyTorch readable images
    assert document["predictions"] == expected["predictions"][:done]
    assert main(["predict", str(run), *flags, "--output", str(streamed), "--resume"]) == 0
    resumed = json.loads(streamed.read_text())
    assert resumed["unreadable"] == expected["unreadable"]  # listed once: a resume skips it
    _assert_same_predictions(resumed["predictions"], expected["predictions"])
    # a write cut short (a fatal signal between two pages): the records that parse whole are kept
    streamed.write_text(text[:text.index('"path"', text.index(expected["predictions"][3]["path"]) - 20) + 30])
    assert main(["predict", str(run), *flags, "--output", str(streamed), "--resume"]) == 0
    _assert_same_predictions(json.loads(streamed.read_text())["predictions"], expected["predictions"])


def test_resume_refuses_another_prediction_and_needs_an_output(run_and_images, tmp_path, capsys):
    run, images = run_and_images
    output = tmp_path / "other.csv"
    output.write_text("path,label,prob\n")
    assert main(["predict", str(run), str(images), "--top-k", "2", "--output", str(output), "--resume"]) == 2
    assert "other columns" in capsys.readouterr().err
    other = tmp_path / "other.json"
    assert main(["predict", str(run), str(images), "--top-k", "1", "--output", str(other)]) == 0
    assert main(["predict", str(run), str(images), "--top-k", "2", "--output", str(other), "--resume"]) == 2
    assert "other fields" in capsys.readouterr().err
    other.write_text("[1, 2")
    assert main(["predict", str(run), str(images), "--output", str(other), "--resume"]) == 2
    assert "not a prediction file" in capsys.readouterr().err
    assert main(["predict", str(run), str(images), "--resume"]) == 2
    assert "--resume continues the rows of --output F.csv or F.json" in capsys.readouterr().err


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


def test_parts_a_killed_torchrun_prediction_left_are_merged_by_a_resume_and_dropped_otherwise(run_and_images,
                                                                                             tmp_path, capsys):
    run, images = run_and_images
    flags = ["predict", str(run), str(images), "--top-k", "1", "--engine", "torch"]
    whole, output = tmp_path / "whole.csv", tmp_path / "preds.csv"
    assert main([*flags, "--output", str(whole)]) == 0
    header, *rows = whole.read_text().splitlines(keepends=True)
    (tmp_path / "preds.csv.part-1").write_text(header + rows[5])  # a part with one row
    assert main([*flags, "--output", str(output), "--resume"]) == 0  # merged first: that file is not predicted
    assert "--resume: 1 files already in" in capsys.readouterr().out
    assert output.read_text() == whole.read_text() and not list(tmp_path.glob("*.part-*"))
    (tmp_path / "preds.csv.part-0").write_text(header + "old.png,cat,1.000000\n")
    assert main([*flags, "--output", str(output)]) == 0  # a new prediction: the old part is dropped
    assert output.read_text() == whole.read_text() and not list(tmp_path.glob("*.part-*"))
