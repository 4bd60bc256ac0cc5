"""Run `tlearn` and SIGKILL it at an exact point: a fault injector for the resume tests.

    python tests/kill_points.py EVENT:N tlearn-args...     (EVENT:N = none:0 runs normally)

Events, counted from 1 within this process:
  step      the N-th training step, after its loss (mid-epoch; --lr find's sweep runs the same loop:
            its batches count too)
  solve     the N-th L-BFGS head solve, before it starts
  cache     the N-th feature-cache write, with the temporary file written but not renamed
  state     the N-th training-state write (the commit), temporary file written, not renamed
  commit    right after the N-th commit, before the derived files (last, model, metrics)
  last      the N-th write of last.safetensors, temporary file written, not renamed
  rows      right after the N-th batch of `tlearn predict` rows went into its streamed output (under
            torchrun: each process counts its own, into its part file)
  record    never kills: copies every committed state to RUN/../snapshots/epoch-E.safetensors
A real SIGKILL: no finally block, no atexit, no cleanup runs.
"""
import os
import shutil
import signal
import sys
from pathlib import Path

import tlearn.features.extractor as features
import tlearn.files as files
import tlearn.infer.streaming as streaming
import tlearn.run_folder.checkpoint as checkpoint
import tlearn.training._loop as loops
import tlearn.training.runner as training

event, count = sys.argv[1].split(":")
count = int(count)
seen = {"step": 0, "solve": 0, "cache": 0, "state": 0, "commit": 0, "last": 0, "rows": 0}


def kill_if(name: str) -> None:
    seen[name] += 1
    if event == name and seen[name] == count:
        os.kill(os.getpid(), signal.SIGKILL)


def wrap(module, attribute, before=None, after=None):
    real = getattr(module, attribute)

    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        result = real(*args, **kwargs)
        if after:
            after(*args, **kwargs)
        return result

    setattr(module, attribute, wrapper)


def killing_writer(name: str, real_write):
    """An atomic write whose temporary file is complete when the kill lands."""
    def write(path, fill):
        if Path(path).name == name or (name == "cache" and "features" in Path(path).parts):
            def fill_then_kill(tmp):
                fill(tmp)
                kill_if("cache" if name == "cache" else {"train_state.safetensors": "state",
                                                          "last.safetensors": "last"}[name])
            return real_write(path, fill_then_kill)
        return real_write(path, fill)
    return write


real_write = files.atomic_write_with
for target in ("cache", "train_state.safetensors", "last.safetensors"):
    real_write = killing_writer(target, real_write)
files.atomic_write_with = real_write
features.atomic_write_with = real_write  # the feature cache streams its entry through this name

wrap(loops, "compute_loss", after=lambda *a, **k: kill_if("step"))
wrap(training, "fit_linear_head_lbfgs", before=lambda *a, **k: kill_if("solve"))
wrap(streaming.CsvStream, "add", after=lambda *a, **k: kill_if("rows"))
wrap(streaming.JsonStream, "add", after=lambda *a, **k: kill_if("rows"))


def after_commit(run_dir, model, state):
    if event == "record":
        epoch = len(checkpoint.read_progress(run_dir)["rows"])
        folder = Path(run_dir).parent / "snapshots"
        folder.mkdir(exist_ok=True)
        shutil.copy(Path(run_dir) / checkpoint.STATE_FILE, folder / f"epoch-{epoch}.safetensors")
    kill_if("commit")


wrap(checkpoint, "save_train_state", after=after_commit)

from tlearn.cli import main  # noqa: E402  (after the patches, like a user's sitecustomize)

sys.exit(main(sys.argv[2:]))
