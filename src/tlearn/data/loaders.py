"""Datasets and DataLoaders: parallel decoding workers, pinned memory where it helps."""
from __future__ import annotations

import os
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .samples import Samples


class ImageDataset(Dataset):
    def __init__(self, samples: Samples, transform: Callable):
        self.samples = samples
        self.transform = transform
        self.decode_size = getattr(transform, "decode_size", None)  # transforms.Pipeline says

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        label = self.samples.labels[index]
        if isinstance(label, tuple):  # multi-label: a multi-hot tuple becomes a float target row
            label = torch.tensor(label, dtype=torch.float32)
        return self.transform(self.samples.load(index, self.decode_size)), label


def default_workers(samples: Samples) -> int:
    """Files: decode in parallel with compute. Decoded images (arrays in memory, the decoded-image
    cache) cost a copy: loading them inline leaves every core to the compute."""
    if samples.decoded:
        return 0
    return min(4, os.cpu_count() or 1)


def make_loader(samples: Samples, transform: Callable, *, batch_size: int, shuffle: bool,
                workers: int | None, device: torch.device, seed: int = 0,
                sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
    workers = default_workers(samples) if workers is None else workers
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        ImageDataset(samples, transform),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        drop_last=drop_last,
        generator=generator,
    )
