"""Indexed collections of labelled images: files on disk, or arrays held in memory."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import DataError
from .images import open_rgb


class Samples:
    """A sequence of (image, label) with a stable identity for the feature cache."""

    labels: list[int]
    decoded = False  # True: loading a sample is a copy (arrays in memory, the decoded-image cache)

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int, decode_size: int | None = None) -> Image.Image:
        """Sample `index` as an RGB image; `decode_size`: see images.open_rgb (a hint)."""
        raise NotImplementedError

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of one sample, without decoding it where the format allows."""
        return self.load(index).size

    def describe(self, index: int) -> str:
        """A name for one sample: its path, or source and index."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Changes whenever any sample or label changes (hash of a manifest)."""
        raise NotImplementedError

    def subset(self, indices: list[int]) -> Samples:
        raise NotImplementedError


@dataclass
class FileSamples(Samples):
    paths: list[str]
    labels: list[int]

    def load(self, index: int, decode_size: int | None = None) -> Image.Image:
        try:
            return open_rgb(self.paths[index], decode_size)
        except Exception as error:  # the pre-scan passed, so the file changed since
            raise DataError(f"cannot read image {self.paths[index]}: {error}") from None

    def image_size(self, index: int) -> tuple[int, int]:
        try:
            with Image.open(self.paths[index]) as image:  # reads the header only
                return image.size
        except Exception as error:
            raise DataError(f"cannot read image {self.paths[index]}: {error}") from None

    def describe(self, index: int) -> str:
        return self.paths[index]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels):
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        return digest.hexdigest()

    def subset(self, indices: list[int]) -> FileSamples:
        return FileSamples([self.paths[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class ArraySamples(Samples):
    """uint8 images (N, H, W) or (N, H, W, 3) in memory: digits, CIFAR."""

    decoded = True

    name: str
    array: np.ndarray
    labels: list[int]
    indices: list[int] = field(default_factory=list)  # positions in the source dataset

    def __post_init__(self) -> None:
        if not self.indices:
            self.indices = list(range(len(self.labels)))

    def load(self, index: int, decode_size: int | None = None) -> Image.Image:
        pixels = self.array[index]
        image = Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB")
        return image.convert("RGB")

    def image_size(self, index: int) -> tuple[int, int]:
        height, width = self.array.shape[1:3]
        return width, height

    def describe(self, index: int) -> str:
        return f"{self.name}[{self.indices[index]}]"

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.name.encode())
        digest.update(np.ascontiguousarray(self.array).tobytes())
        digest.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def subset(self, indices: list[int]) -> ArraySamples:
        return ArraySamples(self.name, self.array[indices], [self.labels[i] for i in indices],
                            [self.indices[i] for i in indices])


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded per-class split: about `fraction` of each class (at least one) goes to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    for label in sorted(by_class):
        members = np.array(by_class[label])
        rng.shuffle(members)
        count = len(members)
        take = 0 if count < 2 else min(count - 1, max(1, int(round(count * fraction))))
        val.extend(members[:take].tolist())
        train.extend(members[take:].tolist())
    return sorted(train), sorted(val)
