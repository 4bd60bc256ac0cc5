"""What `--data` means: the one place that decides, for every command, which images a split is.

`resolve_split(data_config, split)` is called by training (train and val), eval, the
features command and export's parity check. Sources: a folder with train/ and val/ (or
valid/, validation/, test/) class folders; one folder of class folders, split stratified by
`val_split` and the seed; a folder of images with a labels table (`--labels`, data/tables.py);
`digits` (embedded); `cifar10` / `cifar100` (torchvision download,
validation carved out of the training split). Splits: train, val, test, all.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import BUILTIN_DATASETS as BUILTIN
from ..config import DataConfig
from ..errors import ConfigError, DataError
from ._folders import keep_usable, list_class_folders, require_every_class, scan_class_folders
from ._tables import read_table, table_split
from .samples import ArraySamples, FileSamples, Samples, stratified_split

SPLITS = ("train", "val", "test", "all")
VAL_FOLDERS = ("val", "valid", "validation", "test")  # the first present is the validation split
TEST_FOLDERS = ("test", "val", "valid", "validation")  # the first present is the test split


@dataclass
class Split:
    class_names: list[str]
    samples: Samples
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    split_names: list[str] | None = None  # for "all" of a folder with split folders: each sample's


@dataclass
class DatasetSplits:
    class_names: list[str]
    train: Samples
    val: Samples
    description: str
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def resolve_split(data: DataConfig, split: str, seed: int = 0) -> Split:
    """The samples of one split of `data.source` (no PyTorch needed for folders: fails fast).

    A folder without split folders has no test split of its own: "test" and "all" are all of it.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if data.source in BUILTIN:
        return _builtin_split(data, split, seed)
    require_data_source(data.source)
    root = Path(data.source)
    if data.labels:
        found = table_split(data, split, seed)
        return Split(found.class_names, found.samples, found.description, found.skipped, found.split_names)
    folders = split_folders(root)
    if folders:
        return _from_split_folders(folders, split, data.strict_images)
    folder = root / "train" if (root / "train").is_dir() else root
    candidates, names, skipped = list_class_folders(folder)
    if split in ("train", "val"):  # carved from the listing, so only the split's own files are opened
        train_idx, val_idx = stratified_split(candidates.labels, data.val_split, seed)
        candidates = candidates.subset(train_idx if split == "train" else val_idx)
        description = f"{folder}, {data.val_split:g} held out for val"
    else:
        description = str(folder)
    samples, unusable = keep_usable(candidates, data.strict_images)
    if split == "val":  # the files that are no images at all belong to no split: train reports them
        return Split(names, samples, description, unusable)
    require_every_class(samples, names, folder)  # a small class may have no validation image, not none
    return Split(names, samples, description, skipped + unusable)


def require_data_source(source: str) -> None:
    """`--data` names a built-in set or a folder that exists: the one check, for every command."""
    if source in BUILTIN:
        return
    if not os.path.exists(source):
        raise DataError(f"--data not found: {source} (a folder of images, or {', '.join(BUILTIN)})")
    if not os.path.isdir(source):
        raise DataError(f"--data {source} is a file; a folder of class folders (or --labels' image root) is expected")


def split_folders(root: Path) -> dict[str, Path]:
    """{"train", "val", "test"} -> folder, for a root with train/ and a validation folder; else {}."""
    present = [name for name in VAL_FOLDERS if (root / name).is_dir()]
    if not (root / "train").is_dir() or not present:
        return {}
    test = next(name for name in TEST_FOLDERS if name in present)
    return {"train": root / "train", "val": root / present[0], "test": root / test}


def default_eval_split(data: DataConfig) -> str:
    """`tlearn eval`'s default: the validation split, or all of a folder that has no split folders
    (a held-out folder of class folders is evaluated whole). A table's test rows, when it has some."""
    if data.source in BUILTIN:
        return "val"
    spec = data.table
    if spec is not None:
        return "test" if read_table(spec.path, spec.path_col, spec.label_col).has_test else "val"
    root = Path(data.source)
    return "val" if not root.is_dir() or split_folders(root) else "all"


def load_data(data: DataConfig, seed: int = 0) -> DatasetSplits:
    """Train and val splits for training, with the same classes in both."""
    train = resolve_split(data, "train", seed)
    val = resolve_split(data, "val", seed)
    if val.class_names != train.class_names:
        only_train = sorted(set(train.class_names) - set(val.class_names))
        only_val = sorted(set(val.class_names) - set(train.class_names))
        raise DataError(f"train and val classes differ: only in train {only_train}, only in val {only_val}")
    description = train.description if train.description == val.description else \
        f"{train.description} + {val.description}"
    return DatasetSplits(train.class_names, train.samples, val.samples, description, train.skipped + val.skipped)


def require_validation(data: DatasetSplits, val_split: float) -> None:
    """Training picks its best epoch, L2 and temperature on validation: an empty split is a one-line
    error before anything is written (one image per class leaves nothing to hold out)."""
    if len(data.val):
        return
    smallest = min(np.bincount(_first_labels(data.train.labels)), default=0) if len(data.train) else 0
    raise DataError(f"no validation images in {data.description} ({len(data.train)} training images, the "
                    f"smallest class has {smallest}; a class needs 2 images to lend one to validation): add "
                    f"images, raise --val-split (now {val_split:g}), or give a val/ folder")


def _first_labels(labels: list) -> np.ndarray:
    """Class indices for counting: a multi-hot row counts as its first class."""
    if labels and isinstance(labels[0], tuple):
        return np.asarray([row.index(1) if 1 in row else 0 for row in labels], dtype=np.int64)
    return np.asarray(labels, dtype=np.int64)


def load_splits(source: str, *, val_split: float, seed: int, data_dir: str = "data",
                strict_images: bool = False) -> DatasetSplits:
    """`load_data` from plain arguments (scripts, notebooks, tests)."""
    return load_data(DataConfig(source=source, data_dir=data_dir, val_split=val_split,
                                strict_images=strict_images), seed)


def _from_split_folders(folders: dict[str, Path], split: str, strict_images: bool) -> Split:
    if split != "all":
        samples, names, skipped = scan_class_folders(folders[split], strict_images)
        return Split(names, samples, str(folders[split]), skipped)
    paths, labels, split_names, skipped, names = [], [], [], [], None
    for folder in dict.fromkeys(folders.values()):  # train, val, test (test may be the val folder)
        samples, part_names, part_skipped = scan_class_folders(folder, strict_images)
        if names is not None and part_names != names:
            raise DataError(f"{folder} has other classes than {folders['train']}")
        names = part_names
        paths += samples.paths
        labels += samples.labels
        split_names += [folder.name] * len(samples)
        skipped += part_skipped
    return Split(names, FileSamples(paths, labels), " + ".join(map(str, dict.fromkeys(folders.values()))),
                 skipped, split_names)


def _builtin_split(data: DataConfig, split: str, seed: int) -> Split:
    if data.source != "digits" and split == "test":
        samples, names = load_builtin(data.source, "test", data.data_dir)
        return Split(names, samples, f"{data.source} test split")
    if data.source == "digits":
        full, names = _digits_samples()
        origin = "scikit-learn digits (8x8)"
    else:
        full, names = load_builtin(data.source, "train", data.data_dir)
        origin = f"{data.source} train split"
    if split == "all":
        return Split(names, full, origin)
    train_idx, val_idx = stratified_split(full.labels, data.val_split, seed)
    # digits has no test split: its test is the validation split, as for a plain folder's val
    chosen = train_idx if split == "train" else val_idx
    return Split(names, full.subset(chosen), f"{origin}, {data.val_split:g} held out for val")


@functools.lru_cache(maxsize=1)
def _digits_samples() -> tuple[ArraySamples, list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)  # 0..16 -> 0..255
    return ArraySamples("digits", pixels, [int(t) for t in digits.target]), [str(n) for n in digits.target_names]


@functools.lru_cache(maxsize=2)
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

