"""Decoded images kept between epochs: uint8 at the size the pipelines need, memory-mapped.

Fine-tuning decodes every training image every epoch, and validation decodes the val split
again after each one. For a data set that fits `--image-cache-gb`, every image is decoded once
(JPEG draft scaling, then `transforms.Presize`), stored in one flat uint8 file and read back
through a memory map: later epochs, validation and the report skip decoding. The stored
pixels are exactly what the uncached pipelines compute after presizing, so a run gives the
same result with the cache or without it. Keyed like the feature cache (data manifest +
preprocessing); written under temporary names and renamed, the index last, so a reader never
sees half an entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write_with
from .loaders import default_workers, make_loader
from .preprocessing import Preprocessing
from .samples import Samples
from .transforms import presize_transform

logger = logging.getLogger(__name__)

FORMAT = 1
HEADER_PROBES = 64  # headers read to estimate the cache's size before decoding anything


class CachedImages(Samples):
    """`base`'s samples served from the cache: same labels, names and fingerprint."""

    decoded = True

    def __init__(self, base: Samples, pixels_path: Path, index: np.ndarray):
        self.base, self.pixels_path, self.index = base, Path(pixels_path), index  # index rows: offset, h, w
        self._pixels: np.ndarray | None = None  # opened lazily, per process (workers map it themselves)

    @property
    def labels(self) -> list[int]:
        return self.base.labels

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def load(self, index: int, decode_size: int | None = None) -> Image.Image:
        if self._pixels is None:
            self._pixels = np.memmap(self.pixels_path, dtype=np.uint8, mode="r")
        offset, height, width = (int(v) for v in self.index[index])
        return Image.fromarray(self._pixels[offset:offset + height * width * 3].reshape(height, width, 3), "RGB")

    def image_size(self, index: int) -> tuple[int, int]:
        return self.base.image_size(index)

    def describe(self, index: int) -> str:
        return self.base.describe(index)

    def fingerprint(self) -> str:
        return self.base.fingerprint()  # the same images: the feature cache's keys must not change

    def subset(self, indices: list[int]) -> CachedImages:
        return CachedImages(self.base.subset(indices), self.pixels_path, self.index[indices])


def cache_images(samples: Samples, prep: Preprocessing, cache_dir: Path, budget_gb: float, *,
                 workers: int | None, description: str, build: bool = True) -> Samples:
    """`samples` served from the decoded-image cache, built now if missing (and `build`); `samples`
    itself when the images are in memory already, or would not fit `budget_gb`."""
    if samples.decoded or budget_gb <= 0 or len(samples) == 0:
        return samples
    key = _cache_key(samples, prep)
    folder = Path(cache_dir) / "images"
    pixels_path, index_path = folder / f"{key}.u8", folder / f"{key}.index.npy"
    index = _read_index(index_path, pixels_path, len(samples))
    if index is None and not build:
        return samples
    if index is None:
        estimate = _estimated_bytes(samples, prep)
        if estimate > budget_gb * 1e9:
            logger.info(f"{description}: decoded images would take about {estimate / 1e9:.1f} GB, over "
                        f"--image-cache-gb {budget_gb:g}; decoding every epoch")
            return samples
        index = _build(samples, prep, folder, pixels_path, index_path, workers, description, budget_gb)
        if index is None:
            return samples
    else:
        logger.info(f"{description}: {len(samples)} decoded images from {pixels_path}")
    return CachedImages(samples, pixels_path, index)


def _cache_key(samples: Samples, prep: Preprocessing) -> str:
    parts = {"format": FORMAT, "data": samples.fingerprint(), "preprocessing": prep.to_dict()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _stored_shape(width: int, height: int, prep: Preprocessing) -> tuple[int, int]:
    """(height, width) after transforms.Presize."""
    if prep.whole_image:
        fits = height <= prep.crop_size and width <= prep.crop_size
        return (height, width) if fits else (prep.crop_size, prep.crop_size)
    short = min(width, height)
    if short <= prep.resize_size:
        return height, width
    scale = prep.resize_size / short
    return max(1, int(height * scale)), max(1, int(width * scale))


def _estimated_bytes(samples: Samples, prep: Preprocessing) -> float:
    step = max(1, len(samples) // HEADER_PROBES)
    probed = [_stored_shape(*samples.image_size(i), prep) for i in range(0, len(samples), step)]
    return sum(h * w * 3 for h, w in probed) / len(probed) * len(samples)


def _read_index(index_path: Path, pixels_path: Path, count: int) -> np.ndarray | None:
    try:
        index = np.load(index_path)
        size = pixels_path.stat().st_size
    except (OSError, ValueError):  # missing or damaged: rebuilt, never trusted
        return None
    if index.shape != (count, 3) or int(index[-1, 0] + index[-1, 1] * index[-1, 2] * 3) != size:
        return None
    return index


def _build(samples: Samples, prep: Preprocessing, folder: Path, pixels_path: Path, index_path: Path,
           workers: int | None, description: str, budget_gb: float) -> np.ndarray | None:
    """Decode every image once, in order, streamed into one flat uint8 file; None when it cannot be kept."""
    import torch


    start = time.perf_counter()
    workers = default_workers(samples) if workers is None else workers
    loader = make_loader(samples, presize_transform(prep), batch_size=None, shuffle=False, workers=workers,
                         device=torch.device("cpu"))
    rows: list[tuple[int, int, int]] = []

    def write(tmp: str) -> None:
        offset = 0
        with open(tmp, "wb") as handle:
            for image, _ in loader:
                pixels = image.permute(1, 2, 0).contiguous().numpy()  # HWC, as PIL reads it back
                rows.append((offset, image.shape[1], image.shape[2]))
                handle.write(pixels.tobytes())
                offset += pixels.size
                if offset > budget_gb * 1e9 * 1.25:  # the header estimate was far off
                    raise _OverBudget

    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_with(pixels_path, write)
        index = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        atomic_write_with(index_path, lambda tmp: _save_array(tmp, index))  # last: its presence commits the entry
    except _OverBudget:
        logger.info(f"{description}: decoded images outgrew --image-cache-gb {budget_gb:g}; decoding every epoch")
        return None
    except OSError as error:
        logger.warning(f"cannot write the image cache in {folder} ({error.strerror or error}); decoding every epoch")
        return None
    seconds, stored = time.perf_counter() - start, pixels_path.stat().st_size
    logger.info(f"{description}: decoded {len(samples)} images once into {pixels_path.name} ({stored / 1e6:.0f} MB, "
                f"{seconds:.1f} s, {len(samples) / max(seconds, 1e-9):.0f} images/s, {loader.num_workers} workers)")
    return index


class _OverBudget(Exception):
    pass


def _save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append .npy to a temporary name
        np.save(handle, array, allow_pickle=False)


def default_image_cache_gb() -> float:
    """A quarter of the machine's memory, at most 4 GB: the cache lives in the page cache."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1.0
    return min(4.0, total / 4 / 1e9)
