"""`tlearn predict` under torchrun: two CPU processes (gloo) each predict their share of the files and
rank 0 writes the one output file, equal to what one process writes."""
import os
import subprocess
import sys

import pytest

from conftest import make_folder, train_tiny

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


@pytest.mark.parametrize("output", ["preds.csv", "preds.json"])
def test_two_processes_write_the_file_one_process_writes(run_and_images, tmp_path, output):
    run, images = run_and_images
    # 13 files in batches of 3: rank 0 predicts batches 1-2 (6 files), rank 1 batches 3-5 (7 files)
    flags = ["predict", str(run), str(images), "--top-k", "2", "--batch-size", "3", "--engine", "torch"]
    one = _run(sys.executable, "-m", "tlearn", *flags, "--output", str(tmp_path / f"one-{output}"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(*TORCHRUN, "-m", "tlearn", *flags, "--output", str(tmp_path / f"two-{output}"))
    assert two.returncode == 0, two.stderr[-3000:]
    expected = (tmp_path / f"one-{output}").read_text()
    assert (tmp_path / f"two-{output}").read_text() == expected
    assert ("broken.jpg" in expected) == output.endswith("json")  # JSON lists the unreadable files
    assert two.stdout.count(f"wrote {tmp_path / f'two-{output}'}") == 1  # rank 0 alone talks
    assert two.stdout.count("unreadable (1):") == 1 and two.stdout.count("cat/1.png") == 1


def test_resume_is_refused_under_torchrun(run_and_images, tmp_path):
    run, images = run_and_images
    two = _run(*TORCHRUN, "-m", "tlearn", "predict", str(run), str(images), "--output", str(tmp_path / "p.csv"),
               "--resume")
    assert two.returncode != 0 and "--resume runs in one process" in two.stderr
