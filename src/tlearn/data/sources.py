"""Where images come from: a folder of class folders, CIFAR through torchvision, digits.

Every source ends as a `DatasetSplits`: class names, train and val samples, and the files
that were skipped with their reasons.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import is_image_name, unusable_reason
from .samples import ArraySamples, FileSamples, Samples, stratified_split

BUILTIN = ("digits", "cifar10", "cifar100")
VAL_FOLDERS = ("val", "valid", "validation", "test")


@dataclass
class DatasetSplits:
    class_names: list[str]
    train: Samples
    val: Samples
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def load_data(config) -> DatasetSplits:
    """The splits a RunConfig asks for (no PyTorch needed: bad data fails fast)."""
    dc = config.data
    return load_splits(dc.source, val_split=dc.val_split, seed=config.train.seed, data_dir=dc.data_dir,
                       strict_images=dc.strict_images)


def load_splits(source: str, *, val_split: float, seed: int, data_dir: str = "data",
                strict_images: bool = False) -> DatasetSplits:
    """Train and val samples for `source` (a folder or a built-in dataset name)."""
    if source == "digits":
        return _digits(val_split, seed)
    if source in ("cifar10", "cifar100"):
        full, names = load_builtin(source, "train", data_dir)
        train_idx, val_idx = stratified_split(full.labels, val_split, seed)
        return DatasetSplits(names, full.subset(train_idx), full.subset(val_idx),
                             f"{source} train split, {val_split:g} held out for val")
    root = Path(source)
    if not root.exists():
        raise DataError(f"data folder not found: {source} (or use digits, cifar10, cifar100)")
    if not root.is_dir():
        raise DataError(f"--data must be a folder of class folders, got a file: {source}")
    train_dir = root / "train"
    val_dir = next((root / name for name in VAL_FOLDERS if (root / name).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train, names, skipped = scan_class_folders(train_dir, strict_images)
        val, val_names, val_skipped = scan_class_folders(val_dir, strict_images)
        if val_names != names:
            only_train = sorted(set(names) - set(val_names))
            only_val = sorted(set(val_names) - set(names))
            raise DataError(f"train and {val_dir.name} classes differ: only in train {only_train}, "
                            f"only in {val_dir.name} {only_val}")
        return DatasetSplits(names, train, val, f"{train_dir} + {val_dir}", skipped + val_skipped)
    folder = train_dir if train_dir.is_dir() else root
    samples, names, skipped = scan_class_folders(folder, strict_images)
    train_idx, val_idx = stratified_split(samples.labels, val_split, seed)
    return DatasetSplits(names, samples.subset(train_idx), samples.subset(val_idx),
                         f"{folder}, {val_split:g} held out for val", skipped)


def scan_class_folders(folder: Path, strict_images: bool = False) -> tuple[FileSamples, list[str], list]:
    """Every image under each class folder (recursively), checked to decode."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    if len(class_dirs) < 2:
        raise DataError(f"need at least 2 classes, found 1 class folder in {folder}: {class_dirs[0].name}")
    candidates, skipped = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(_walk_files(class_dir)):
            if Path(path).name.startswith("."):
                skipped.append((path, "hidden file"))
            elif not is_image_name(path):
                skipped.append((path, "not an image file extension"))
            else:
                candidates.append((path, label))
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        reasons = list(pool.map(unusable_reason, [p for p, _ in candidates]))
    paths, labels = [], []
    for (path, label), reason in zip(candidates, reasons):
        if reason is None:
            paths.append(path)
            labels.append(label)
        elif strict_images:
            raise DataError(f"{reason}: {path} (drop --strict-images to skip such files)")
        else:
            skipped.append((path, reason))
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_dirs))
    empty = [class_dirs[i].name for i, count in enumerate(counts) if count == 0]
    if empty:
        raise DataError(f"class folder(s) with no usable images in {folder}: {', '.join(empty)}")
    return FileSamples(paths, labels), [d.name for d in class_dirs], skipped


def dataset_for_features(source: str, data_dir: str = "data") -> tuple[Samples, list[str], list[str] | None]:
    """Every image of a source, unsplit: (samples, class names, split name per sample or None)."""
    if source in BUILTIN:
        samples, names = _digits_samples() if source == "digits" else load_builtin(source, "train", data_dir)
        return samples, names, None
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"data folder not found: {source}")
    parts = [name for name in ("train", *VAL_FOLDERS) if (root / name).is_dir()]
    if not parts:
        samples, names, _ = scan_class_folders(root)
        return samples, names, None
    paths, labels, split, names = [], [], [], None
    for part in parts:
        samples, part_names, _ = scan_class_folders(root / part)
        names = names or part_names
        if part_names != names:
            raise DataError(f"{root / part} has other classes than {root / parts[0]}")
        paths += samples.paths
        labels += samples.labels
        split += [part] * len(samples)
    return FileSamples(paths, labels), names, split


def _walk_files(folder: Path):
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in files:
            yield os.path.join(directory, name)


def _digits_samples() -> tuple[ArraySamples, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return ArraySamples("digits", pixels, [int(t) for t in digits.target]), [str(n) for n in digits.target_names]


def _digits(val_split: float, seed: int) -> DatasetSplits:
    full, names = _digits_samples()
    train_idx, val_idx = stratified_split(full.labels, val_split, seed)
    return DatasetSplits(names, full.subset(train_idx), full.subset(val_idx),
                         f"scikit-learn digits (8x8), {val_split:g} held out for val")


def load_builtin(name: str, split: str, data_dir: str) -> tuple[ArraySamples, list[str]]:
    """CIFAR-10/100 through torchvision, downloaded to `data_dir` (one clear line offline)."""
    from torchvision import datasets

    dataset_class = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        dataset = dataset_class(data_dir, train=(split == "train"), download=True)
    except Exception as error:  # URLError, socket errors: no network
        raise DataError(f"could not download {name} to {data_dir} ({type(error).__name__}); with no "
                        f"network, place the extracted dataset there or pass --data FOLDER") from None
    samples = ArraySamples(f"{name}-{split}", np.asarray(dataset.data), [int(t) for t in dataset.targets])
    return samples, list(dataset.classes)
