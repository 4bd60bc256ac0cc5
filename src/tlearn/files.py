"""Atomic file writes and JSON in and out: the only way tlearn writes a file.

Every file is written to a temporary name in its own folder, flushed, fsync'ed and renamed,
so a kill at any moment leaves either the previous complete file or the new one, and a
reader (another process sharing the feature cache) never sees half a file. No torch here:
the HTML report and the CLI's error paths use this module without loading PyTorch.
"""
from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import RunFolderError


def atomic_write(path: str | Path, data: bytes | str) -> None:
    payload = data.encode() if isinstance(data, str) else data

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(payload)

    atomic_write_with(path, write)


def atomic_write_with(path: str | Path, write: Callable[[str], None]) -> None:
    """`write(temporary_path)` fills a temporary file, which is fsync'ed and renamed to `path`."""
    path = Path(path)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The mode `path` gets: its own when it is replaced, else what `open()` would give (0666 less
    the umask). mkstemp makes its file 0600, which would hide a report or a model from a web
    server or a service user."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it,
    so set and restore it under a lock (other threads of tlearn write files too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (views, tied weights)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write_with(path, lambda tmp: save_file(plain, tmp, metadata))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    """A run folder's JSON file; missing or damaged is a one-line RunFolderError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{path} not found: not a complete tlearn run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFolderError(f"{path} is damaged ({error})") from None
