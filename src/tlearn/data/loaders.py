"""Datasets and DataLoaders: parallel decoding workers, pinned memory where it helps."""
from __future__ import annotations

import os
from collections.abc import Callable

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


def default_workers(samples: Samples, device: torch.device | None = None) -> int:
    """Files: decode in parallel with compute. Decoded images (arrays in memory, the decoded-image
    cache) cost a copy: loading them inline leaves every core to the compute.

    Computing on a CPU of 2 cores or fewer, files are decoded inline too: the compute threads take
    every core, and a worker preempts them and ships each batch through shared memory. Measured
    fine-tuning Lite0 at 224 px on 2 cores, 500x375 JPEGs decoded every epoch
    (benchmarks/finetune.py): 25.9 images/s inline against 14.2-16.6 with 2 workers, and 3 s of
    system time per run against 23-27 s. (Larger CPUs keep workers: not measured here.)
    """
    if samples.decoded:
        return 0
    cores = os.cpu_count() or 1
    if device is not None and device.type == "cpu" and cores <= 2:
        return 0
    return min(4, cores)


def make_loader(samples: Samples, transform: Callable, *, batch_size: int, shuffle: bool,
                workers: int | None, device: torch.device, seed: int = 0,
                sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
    workers = default_workers(samples, device) if workers is None else workers
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
