"""A photo-sized folder for the fine-tuning benchmarks, built from the shared CIFAR-10 JPEGs.

    python benchmarks/make_photos.py [--out data/photos] [--classes airplane,cat] [--seed 0]

The shape of the fine-tuning issue's held-out folder of real photos: 2 classes, 245 train and
153 val JPEGs of 500x375. CIFAR-10's 32 px images are enlarged (bicubic) to 500x375 and saved
at JPEG quality 90, so decoding costs what a real photo of that size costs. Seeded: the same
arguments give the same files.
"""
from __future__ import annotations

import argparse
import io
import random
import sys
import tarfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TARBALL, members_by_class, share  # noqa: E402

SIZE = (500, 375)


def make_photos(out: Path, classes: list[str], train: int = 245, val: int = 153, seed: int = 0) -> Path:
    if not TARBALL.is_file():
        raise SystemExit(f"{TARBALL} not found: the benchmarks read the project's shared data folder")
    rng = random.Random(seed)
    with tarfile.open(TARBALL) as archive:
        by_class = members_by_class(archive)
        for index, name in enumerate(classes):
            chosen = by_class[name]
            rng.shuffle(chosen)
            n_train, n_val = share(train, index, len(classes)), share(val, index, len(classes))
            for split, items in (("train", chosen[:n_train]), ("val", chosen[n_train:n_train + n_val])):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for member in items:
                    image = Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB")
                    image.resize(SIZE, Image.BICUBIC).save(folder / Path(member.name).name, quality=90)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "photos")
    parser.add_argument("--classes", default="airplane,cat")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = make_photos(args.out, args.classes.split(","), seed=args.seed)
    print(f"wrote {sum(1 for _ in out.rglob('*.jpg'))} JPEGs of {SIZE[0]}x{SIZE[1]} under {out}")


if __name__ == "__main__":
    main()
