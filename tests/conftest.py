"""Shared fixtures: tiny image folders made on the fly, and the shared data folder."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
TINY_MODEL = "timm:test_resnet"  # 0.5M parameters, BatchNorm inside: fast mechanics


def needs_shared(path: str) -> Path:
    full = SHARED_DATA / path
    if not full.exists():
        pytest.skip(f"{full} is absent (the project's shared data folder is not beside the repo)")
    return full


def write_image(path: Path, label: int, size=(40, 30), mode="RGB", seed=0) -> None:
    """An image whose mean colour depends on its class, so a tiny model can learn it."""
    rng = np.random.default_rng(seed)
    base = np.zeros((size[1], size[0], 3), dtype=np.float64)
    base[..., label % 3] = 200
    pixels = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_folder(root: Path, classes=("cat", "dog", "fox"), per_class=8, split_dirs=False) -> Path:
    """root/<class>/*.png, or root/train|val/<class>/*.png with split_dirs."""
    for label, name in enumerate(classes):
        for i in range(per_class):
            if split_dirs:
                subset = "val" if i % 4 == 0 else "train"
                target = root / subset / name / f"{i}.png"
            else:
                target = root / name / f"{i}.png"
            size = (40 + 7 * (i % 3), 30 + 5 * (i % 2))  # non-square, varied sizes
            write_image(target, label, size=size, seed=label * 100 + i)
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "images")


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "split", split_dirs=True)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch):
    """Each test gets its own feature cache, so no test sees another's features."""
    monkeypatch.setenv("TLEARN_CACHE", str(tmp_path / "cache"))


def train_tiny(root: Path, data: Path, **train) -> tuple[dict, Path]:
    """A TINY_MODEL run (random weights, 32 px, batch 8) on `data` into root/run, its cache under root:
    the model the inference, serving and export tests load. `train`: TrainConfig fields (default a
    one-epoch linear probe)."""
    import tlearn

    settings = {"strategy": "linear-probe", "epochs": 1, "cache_dir": str(root / "cache"), **train}
    return tlearn.train(tlearn.RunConfig(
        data=tlearn.DataConfig(source=str(data), image_size=32, batch_size=8),
        model=tlearn.ModelConfig(name=TINY_MODEL, weights="none"), train=tlearn.TrainConfig(**settings)),
        root / "run")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m tlearn ARGS` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tlearn", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


KILLER = ROOT / "tests" / "kill_points.py"


def kill_chain(train: list[str], events: list[str], reference: Path, run: Path, command: str = "train") -> None:
    """`tlearn COMMAND TRAIN` (train, or distill) uninterrupted into `reference`; into `run`, SIGKILLed at
    each of `events` (see kill_points.py: the first starts the run, the others resume it), then resumed
    to the end."""
    def tlearn(event: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(KILLER), event, *args], capture_output=True, text=True,
                              timeout=300, check=False)

    assert tlearn("none:0", command, *train, "--out", str(reference)).returncode == 0
    for number, event in enumerate(events):
        first = [command, *train, "--out", str(run)] if number == 0 else ["train", "--resume", str(run)]
        result = tlearn(event, *first)
        assert result.returncode == -signal.SIGKILL, f"{event} was never reached: {result.stderr[-2000:]}"
    result = tlearn("none:0", "train", "--resume", str(run))
    assert result.returncode == 0, result.stderr[-3000:]


SERVER_START_SECONDS = 180  # a loaded machine: importing PyTorch, loading the model, exporting or extracting


def start_server(command: list[str]) -> tuple[subprocess.Popen, int]:
    """A `tlearn serve|label ... --port 0` process and the port it prints; a server that does not
    start within SERVER_START_SECONDS is killed and fails the test with what it printed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(SERVER_START_SECONDS, process.kill)
    watchdog.start()
    lines = []
    for line in process.stdout:
        lines.append(line)
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            watchdog.cancel()
            return process, int(found.group(1))
    watchdog.cancel()
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    raise AssertionError("the server did not start: " + "".join(lines) + process.stderr.read())


class ServerProcess:
    """A server process started by `command` (`tlearn serve|label ... --port 0`), at the address it printed."""

    def __init__(self, command: list[str]):
        self.process, self.port = start_server(command)
        self.url = f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: no shutdown code runs
        self.process.wait(timeout=30)

    def port_closed(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) != 0


@pytest.fixture
def server_processes():
    """Call it with each ServerProcess a test starts: every one is killed when the test ends, its port closed."""
    started: list[ServerProcess] = []
    yield lambda server: started.append(server) or server
    for server in started:
        server.kill()
        assert server.port_closed()
