"""Shared by the benchmarks: a seeded, stratified sample of CIFAR-10 JPEG files on disk."""
from __future__ import annotations

import random
import tarfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-jpg-train.tar.gz"


def sample_cifar(out: Path, train_images: int, val_images: int, seed: int = 0) -> Path:
    """Write `out/train/<class>/*.jpg` and `out/val/<class>/*.jpg`, stratified and seeded."""
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} not found: the benchmarks read the project's shared data folder")
    with tarfile.open(TARBALL) as archive:
        members = [m for m in archive.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        by_class = defaultdict(list)
        for member in members:
            by_class[Path(member.name).parent.name].append(member)
        classes = sorted(by_class)
        rng = random.Random(seed)
        for index, name in enumerate(classes):
            items = sorted(by_class[name], key=lambda m: m.name)
            rng.shuffle(items)
            n_train = train_images // len(classes) + (index < train_images % len(classes))
            n_val = val_images // len(classes) + (index < val_images % len(classes))
            for split, chosen in (("train", items[:n_train]), ("val", items[n_train:n_train + n_val])):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for member in chosen:
                    (folder / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    return out
