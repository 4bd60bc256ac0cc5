"""Shared by the benchmarks: a seeded, stratified sample of CIFAR-10 JPEG files on disk."""
from __future__ import annotations

import random
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpg-train.tar.gz"


def members_by_class(archive: tarfile.TarFile) -> dict[str, list[tarfile.TarInfo]]:
    """The tarball's JPEG members by class folder, each list sorted by name (a seeded shuffle's start)."""
    by_class = defaultdict(list)
    for member in archive.getmembers():
        if member.isfile() and member.name.endswith(".jpg"):
            by_class[Path(member.name).parent.name].append(member)
    return {name: sorted(items, key=lambda m: m.name) for name, items in by_class.items()}


def share(total: int, index: int, parts: int) -> int:
    """Class `index`'s part of `total` images split as evenly as possible over `parts` classes."""
    return total // parts + (index < total % parts)


def sample_cifar(out: Path, train_images: int, val_images: int, seed: int = 0) -> Path:
    """Write `out/train/<class>/*.jpg` and `out/val/<class>/*.jpg`, stratified and seeded."""
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} not found: the benchmarks read the project's shared data folder")
    with tarfile.open(TARBALL) as archive:
        by_class = members_by_class(archive)
        classes = sorted(by_class)
        rng = random.Random(seed)
        wanted = []  # (member, destination)
        for index, name in enumerate(classes):
            items = by_class[name]
            rng.shuffle(items)
            n_train, n_val = share(train_images, index, len(classes)), share(val_images, index, len(classes))
            for split, chosen in (("train", items[:n_train]), ("val", items[n_train:n_train + n_val])):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                wanted += [(member, folder / Path(member.name).name) for member in chosen]
        # In the archive's order: a gzip stream seeks backwards by decompressing again from its start,
        # so members read in shuffled order cost minutes for a few thousand files.
        for member, destination in sorted(wanted, key=lambda pair: pair[0].offset_data):
            destination.write_bytes(archive.extractfile(member).read())
    return out
