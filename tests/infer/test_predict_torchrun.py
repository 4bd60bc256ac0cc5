"""`tlearn predict` under torchrun: two CPU processes (gloo) each predict their share of the files into
their own part file and rank 0 merges them into the one output file, equal to what one process
writes; killed, the parts keep each process's finished batches and `--resume` completes the file."""
import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import KILLER, make_folder, train_tiny

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(*command: str) -> subprocess.CompletedProcess:
    """One thread per process, in both runs: another thread count may round the last bits otherwise."""
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun-predict")
    data = make_folder(root / "data", per_class=6, split_dirs=True)
    _, run = train_tiny(root, data, strategy="linear-probe", epochs=1, report=False)
    (data / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")  # an unreadable file, merged in order too
    return run, data / "train"


@pytest.fixture(scope="module")
def one_process_file(run_and_images, tmp_path_factory):
    """The text `tlearn predict` writes in one process into a .csv or .json output (each made once)."""
    run, images = run_and_images
    folder, made = tmp_path_factory.mktemp("one-process"), {}

    def text(output: str) -> str:
        if output not in made:
            one = _run(sys.executable, "-m", "tlearn", "predict", str(run), str(images), "--top-k", "2",
                       "--batch-size", "3", "--engine", "torch", "--output", str(folder / output))
            assert one.returncode == 0, one.stderr[-3000:]
            made[output] = (folder / output).read_text()
        return made[output]
    return text


@pytest.mark.parametrize("output", ["preds.csv", "preds.json"])
def test_two_processes_write_the_file_one_process_writes(run_and_images, one_process_file, tmp_path, output):
    run, images = run_and_images
    # 13 files in batches of 3: rank 0 predicts batches 1-2 (6 files), rank 1 batches 3-5 (7 files)
    flags = ["predict", str(run), str(images), "--top-k", "2", "--batch-size", "3", "--engine", "torch"]
    two = _run(*TORCHRUN, "-m", "tlearn", *flags, "--output", str(tmp_path / f"two-{output}"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert not list(tmp_path.glob("*.part-*"))  # merged, then removed
    expected = one_process_file(output)
    assert (tmp_path / f"two-{output}").read_text() == expected
    assert ("broken.jpg" in expected) == output.endswith("json")  # JSON lists the unreadable files
    assert two.stdout.count(f"wrote {tmp_path / f'two-{output}'}") == 1  # rank 0 alone talks
    assert two.stdout.count("unreadable (1):") == 1 and two.stdout.count("cat/1.png") == 1


def _rows_in(part) -> list[str]:
    """The paths a part file holds (it must parse whole: CSV lines, or a JSON document with its
    unreadable files too)."""
    if ".json." in part.name:
        document = json.loads(part.read_text())
        return [item["path"] for item in document["predictions"] + document["unreadable"]]
    return [row[0] for row in list(csv.reader(part.open()))[1:]]


@pytest.mark.parametrize("output, resume_processes", [("preds.csv", 2), ("preds.json", 1)])
def test_a_killed_torchrun_prediction_resumes_to_the_file_one_process_writes(run_and_images, one_process_file,
                                                                             tmp_path, output, resume_processes):
    run, images = run_and_images
    flags = ["predict", str(run), str(images), "--top-k", "2", "--batch-size", "3", "--engine", "torch"]
    target = tmp_path / f"two-{output}"
    # each process SIGKILLed right after its first batch went into its part (kill_points.py)
    killed = _run(*TORCHRUN, str(KILLER), "rows:1", *flags, "--output", str(target))
    assert killed.returncode != 0 and not target.exists(), killed.stderr[-3000:]
    parts = sorted(tmp_path.glob(f"two-{output}.part-*"))
    assert [part.name[-1] for part in parts] == ["0", "1"]
    done = [_rows_in(part) for part in parts]
    # whole batches of readable images (rank 1 may die before its first); JSON lists unreadable files too
    assert len(done[0]) == 3 and len(done[1]) in (0, 3 + output.endswith("json")), done
    resumed = _run(*(TORCHRUN if resume_processes == 2 else [sys.executable]), "-m", "tlearn", *flags,
                   "--output", str(target), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume: {len(done[0]) + len(done[1])} files already in" in resumed.stdout
    assert target.read_text() == one_process_file(output)
    assert not list(tmp_path.glob("*.part-*"))
