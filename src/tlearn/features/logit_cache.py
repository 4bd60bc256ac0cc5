"""A teacher's logits, computed once: per image for its own evaluation view, per batch for the
student's augmented views.

Distillation (training/distillation.py) asks a teacher for the logits of every training batch.
On un-augmented images those are a fixed function of the image: the teacher's backbone features
come from the feature cache (extractor.py, keyed by the backbone's content, the preprocessing and
the data), and its head turns them into logits. An augmented view exists only once the loader
drew it; its key is the view itself: a hash of the teacher's identity, the view's bytes and how
the view is mapped to the teacher's input. The views are drawn from seeded RNG states that each
epoch commits, so a resumed or repeated run draws the same views and finds their logits here:
the teacher never runs twice on the same input. Entries are float32 .npy files, written
atomically (files.py): a killed run leaves whole entries or none.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_with

logger = logging.getLogger(__name__)

LOGIT_CACHE_FORMAT = 1


def tensor_digest(*parts: torch.Tensor | str) -> str:
    """A hash of tensors (their dtype, shape and bytes) and strings, in order."""
    digest = hashlib.sha256(f"logits-{LOGIT_CACHE_FORMAT}".encode())
    for part in parts:
        if isinstance(part, str):
            digest.update(part.encode())
            continue
        tensor = part.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


class LogitCache:
    """Logits by key under `cache_dir`/teacher_logits; `None` keeps nothing. A cache that cannot be
    written is one warning, and the run goes on without it."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.folder = Path(cache_dir) / "teacher_logits" if cache_dir is not None else None
        self.failed = False
        self.hits = self.misses = 0

    def get(self, key: str, rows: int) -> torch.Tensor | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.npy"
        try:
            array = np.load(path, allow_pickle=False) if path.is_file() else None
        except (OSError, ValueError):  # damaged: recomputed, never trusted
            array = None
        if array is None or array.dtype != np.float32 or len(array) != rows:
            self.misses += 1
            return None
        self.hits += 1
        return torch.from_numpy(array)

    def put(self, key: str, logits: torch.Tensor) -> None:
        if self.folder is None or self.failed:
            return
        array = np.ascontiguousarray(logits.detach().float().cpu().numpy())

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_with(self.folder / f"{key}.npy", write)
        except OSError as error:
            self.failed = True
            logger.warning(f"cannot write the teacher's logit cache in {self.folder} ({error.strerror or error}); "
                           "going on without it")
