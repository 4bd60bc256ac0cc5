"""Folders of class folders: list the candidate files, then check that they decode.

Listing is cheap (names only); checking opens every file, in threads. They are separate so
a split can be carved from the listing and only the files of the split asked for checked
(export's parity check reads a handful of validation images, not the whole data set).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import is_image_name, unusable_reason
from .samples import FileSamples


def list_class_folders(folder: Path) -> tuple[FileSamples, list[str], list[tuple[str, str]]]:
    """(candidate images, class names, skipped non-images) of folder/<class>/**/<file>."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders in {folder}: expected {folder}/<class>/<image files>")
    if len(class_dirs) < 2:
        raise DataError(f"need at least 2 classes, found 1 class folder in {folder}: {class_dirs[0].name}")
    paths, labels, skipped = [], [], []
    for label, class_dir in enumerate(class_dirs):
        for path in sorted(_walk_files(class_dir)):
            if Path(path).name.startswith("."):
                skipped.append((path, "hidden file"))
            elif not is_image_name(path):
                skipped.append((path, "not an image file extension"))
            else:
                paths.append(path)
                labels.append(label)
    return FileSamples(paths, labels), [d.name for d in class_dirs], skipped


def keep_usable(samples: FileSamples, strict_images: bool = False) -> tuple[FileSamples, list[tuple[str, str]]]:
    """The samples whose files decode, and the others with their reasons (or an error, strict)."""
    kept, skipped = [], []
    for index, (path, reason) in enumerate(zip(samples.paths, unusable_reasons(samples.paths))):
        if reason is None:
            kept.append(index)
        elif strict_images:
            raise DataError(f"{reason}: {path} (drop --strict-images to skip such files)")
        else:
            skipped.append((path, reason))
    return samples.subset(kept), skipped


def unusable_reasons(paths: list[str]) -> list[str | None]:
    """For each file: None when it decodes, else why not (files opened in threads)."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        return list(pool.map(unusable_reason, paths))


def require_every_class(samples: FileSamples, class_names: list[str], folder: Path) -> None:
    counts = np.bincount(np.asarray(samples.labels, dtype=np.int64), minlength=len(class_names))
    empty = [class_names[i] for i, count in enumerate(counts) if count == 0]
    if empty:
        raise DataError(f"class folder(s) with no usable images in {folder}: {', '.join(empty)}")


def scan_class_folders(folder: Path, strict_images: bool = False) -> tuple[FileSamples, list[str], list]:
    """Every usable image under each class folder (recursively); each class must have one."""
    candidates, names, skipped = list_class_folders(folder)
    samples, unusable = keep_usable(candidates, strict_images)
    require_every_class(samples, names, folder)
    return samples, names, skipped + unusable


def _walk_files(folder: Path):
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in files:
            yield os.path.join(directory, name)


NO_LABEL = -1  # an image without a label (distillation's --unlabeled): the teacher labels it softly


def scan_unlabeled(folder: str | Path, strict_images: bool = False) -> tuple[FileSamples, list[tuple[str, str]]]:
    """Every usable image under `folder` (recursively, hidden files left out), labelled NO_LABEL,
    and the files skipped with their reasons."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--unlabeled {folder} is not a folder of images")
    paths = sorted(path for path in _walk_files(folder)
                   if not Path(path).name.startswith(".") and is_image_name(path))
    samples, skipped = keep_usable(FileSamples(paths, [NO_LABEL] * len(paths)), strict_images)
    if not len(samples):
        raise DataError(f"--unlabeled {folder} holds no usable image files")
    return samples, skipped
