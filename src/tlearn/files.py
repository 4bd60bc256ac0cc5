"""Atomic file writes and JSON in and out: the only way tlearn writes a file.

Every file is written to a temporary name in its own folder, flushed, fsync'ed and renamed,
so a kill at any moment leaves either the previous complete file or the new one, and a
reader (another process sharing the feature cache) never sees half a file. No torch here:
the HTML report and the CLI's error paths use this module without loading PyTorch.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
