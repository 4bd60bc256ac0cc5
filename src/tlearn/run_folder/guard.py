"""Who may write a run folder: one process at a time, and never over another run by accident.

`claim_run_folder` is taken by train (and demo, `tlearn.fit`, select's `--finetune-best`): it
locks the folder and refuses one that holds a run or files of the user's, unless `--overwrite`
says to clear the run's own files (and only those). `run_folder_lock` is taken by everything
else that writes into an existing run: resume, `eval --report`, export.

The lock is `flock` on a file in the run folder: the kernel drops it when its process ends, so
a run killed with SIGKILL never blocks the next one. No torch here: the command line checks
`--out` before it loads any data.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunFolderError

LOCK_FILE = ".tlearn.lock"
# Every file and folder a run writes into its folder (tests/run_folder/test_run_guard.py checks a full run
# against this list): what --overwrite may delete.
RUN_FILES = frozenset({
    "config.yaml", "metrics.csv", "summary.json", "skipped_files.txt", "model.json", "model.safetensors",
    "last.safetensors", "train_state.safetensors", "calibration.json", "report.html", "curves.png",
    "confusion.png", "reliability.png", "lr_find.csv", "lr_find.png",
    "pseudo_labels.json",  # train --unlabeled: the pseudo-labels chosen (training/pseudo_labels.py)
})
RUN_FOLDERS = {"tensorboard": None, "export": ("model.onnx", "model.onnx.json", "model.torchscript.pt",
                                               "model.torchscript.pt.json",
                                               "engine.onnx", "engine.onnx.json", "model.int8.onnx",
                                               "model.int8.onnx.json")}  # None: all of it is the run's
_MARKS = ("model.json", "train_state.safetensors", "config.yaml")  # any of them: a run lives here


def check_out_folder(run_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse a folder that holds a run (unless `overwrite`) or files that are not a run's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    entries = [entry for entry in os.listdir(run_dir) if not entry.startswith(".")]
    if not entries:
        return
    is_run = any((run_dir / mark).is_file() for mark in _MARKS)
    theirs = sorted(entry for entry in entries if entry not in RUN_FILES and entry not in RUN_FOLDERS)
    if is_run and not overwrite:
        if (run_dir / "summary.json").is_file():
            raise RunFolderError(f"--out {run_dir} holds a finished tlearn run: replace it with --overwrite, or "
                                 "choose another --out (--resume continues only an unfinished run)")
        raise RunFolderError(f"--out {run_dir} holds an unfinished tlearn run: continue it with tlearn train "
                             f"--resume {run_dir}, or replace it with --overwrite")
    if is_run:
        return
    clashing = sorted(entry for entry in entries if entry not in theirs)  # names a run would write over
    if not overwrite or clashing:
        shown = ", ".join((clashing or theirs)[:3]) + (" ..." if len(clashing or theirs) > 3 else "")
        beside = "" if clashing else "; --overwrite puts the run beside them"
        raise RunFolderError(f"--out {run_dir} is not empty and holds no tlearn run ({shown}): choose a new or "
                             f"empty folder{beside} (--resume continues a run, --overwrite replaces one)")


def clear_run_files(run_dir: Path) -> list[str]:
    """Delete what a run wrote (RUN_FILES, RUN_FOLDERS, its temporary files); keep everything else."""
    removed = []
    for entry in sorted(os.listdir(run_dir)):
        path = run_dir / entry
        temporary = entry.startswith(".") and entry.endswith(".tmp") and \
            any(entry.startswith(f".{name}.") for name in RUN_FILES)
        if (entry in RUN_FILES or temporary) and path.is_file():
            path.unlink()
            removed.append(entry)
        elif entry in RUN_FOLDERS and path.is_dir():
            names = RUN_FOLDERS[entry]
            if names is None:
                shutil.rmtree(path)
            else:
                for name in names:
                    (path / name).unlink(missing_ok=True)
                if not any(path.iterdir()):
                    path.rmdir()
            removed.append(entry + "/")
    return removed


@contextmanager
def claim_run_folder(run_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A new run's folder, locked for the life of the run: made if absent, refused if it holds
    a run or other files (check_out_folder), the run's old files cleared under `overwrite`."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot create --out {run_dir} ({error.strerror or type(error).__name__})") from None
    with run_folder_lock(run_dir):
        check_out_folder(run_dir, overwrite)  # again, under the lock: the check before it could race
        if overwrite:
            clear_run_files(run_dir)
        yield run_dir


@contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold the run folder's lock; a second writer gets a one-line RunFolderError at once."""
    import fcntl

    if not Path(run_dir).is_dir():
        raise RunFolderError(f"run folder not found: {run_dir}")
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise RunFolderError(f"cannot lock run folder {run_dir} ({error.strerror or type(error).__name__})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(f"run folder {run_dir} is in use by another tlearn process (pid {holder}); "
                                 "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message a second writer gets
        yield
    finally:
        os.close(fd)  # closing drops the flock


@contextmanager
def run_folder_writes(run_dir: Path, what: str, *, committed: bool = True):
    """A full disk or a read-only folder is the user's to fix: one line, exit 2. The files
    already committed stay intact (every write is atomic), so the run resumes once it is fixed;
    before the first commit (`committed=False`) there is nothing to resume yet."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or type(error).__name__
        then = (f"the last committed epoch is intact: fix this, then tlearn train --resume {run_dir}" if committed
                else "nothing was trained yet: fix this and start the run again")
        raise RunFolderError(f"could not write {what} to {run_dir} ({reason}); {then}") from None
