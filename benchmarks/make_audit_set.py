"""Build a CIFAR-10 data set with planted problems, for benchmarks/audit_quality.py.

From /work/shared/data/cifar10-jpg-train.tar.gz (common.sample_cifar): train/ and val/ class
folders of 32 px JPEGs, then, each planted copy beside or across from its original:
- exact: the same pixels under another name (half byte copies, half re-saved as PNG);
- reencode: JPEG quality 60;
- resize: shrunk to 16-22 px and enlarged back to 32 px (JPEG quality 90);
- crop: 2-4 px cut off one or two sides (about 10 %), half kept at that size, half enlarged
  back to 32 px (JPEG quality 90);
a third of the copies go to the other split (leakage); and 5 % of the other images are moved
to a wrong class folder (label flips). The ground truth goes to DIR/truth.json (paths
relative to DIR).

    python benchmarks/make_audit_set.py --seed 1 --out data/audit-seed1
"""
from __future__ import annotations

import argparse
import io
import json
import random
import shutil
from pathlib import Path

from PIL import Image

from common import ROOT, sample_cifar

KINDS = ("exact", "reencode", "resize", "crop")


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def make_copy(original: Path, kind: str, rng: random.Random) -> tuple[bytes, str]:
    """(file bytes, suffix) of a planted copy of `original`."""
    image = Image.open(original).convert("RGB")
    if kind == "exact":
        if rng.random() < 0.5:
            return original.read_bytes(), ".jpg"
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")  # other bytes, the same decoded pixels
        return buffer.getvalue(), ".png"
    if kind == "reencode":
        return jpeg(image, 60), ".jpg"
    width, height = image.size
    if kind == "resize":
        side = rng.randint(16, 22)
        return jpeg(image.resize((side, side), Image.Resampling.BILINEAR).resize((width, height),
                                                                                 Image.Resampling.BICUBIC), 90), ".jpg"
    cut = rng.randint(2, 4)
    left = rng.randint(0, cut)
    top = rng.randint(0, cut) if rng.random() < 0.5 else 0
    cropped = image.crop((left, top, width - (cut - left), height - (cut - top) if top else height))
    if rng.random() < 0.5:
        cropped = cropped.resize((width, height), Image.Resampling.BICUBIC)
    return jpeg(cropped, 90), ".jpg"


def plant(out: Path, per_kind: int, flip_share: float, seed: int) -> dict:
    rng = random.Random(seed + 1000)
    files = sorted(out.glob("*/*/*.jpg"))
    classes = sorted({path.parent.name for path in files})
    rng.shuffle(files)
    originals, rest = files[:per_kind * len(KINDS)], files[per_kind * len(KINDS):]
    pairs = []
    for number, original in enumerate(originals):
        kind = KINDS[number % len(KINDS)]
        data, suffix = make_copy(original, kind, rng)
        cross = number % 3 == 0
        split = original.parts[-3]
        target_split = ({"train": "val", "val": "train"}[split]) if cross else split
        target = out / target_split / original.parent.name / f"{kind}_{number:04d}{suffix}"
        target.write_bytes(data)
        pairs.append({"a": str(original.relative_to(out)), "b": str(target.relative_to(out)), "kind": kind,
                      "cross_split": cross})
    flips = []
    for path in rest[:round(flip_share * len(files))]:
        given = rng.choice([name for name in classes if name != path.parent.name])
        target = path.parent.parent / given / f"{path.parent.name}_{path.name}"  # names repeat across classes
        shutil.move(path, target)
        flips.append({"path": str(target.relative_to(out)), "true": path.parent.name, "given": given})
    return {"seed": seed, "images": len(files) + len(pairs), "pairs": pairs, "flips": flips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=250)
    parser.add_argument("--per-kind", type=int, default=30, help="planted copies of each kind")
    parser.add_argument("--flips", type=float, default=0.05, help="share of images given a wrong label")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "data" / f"audit-seed{args.seed}"
    if out.exists():
        shutil.rmtree(out)
    sample_cifar(out, args.train, args.val, seed=args.seed)
    truth = plant(out, args.per_kind, args.flips, args.seed)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    print(json.dumps({"out": str(out), "images": truth["images"], "pairs": len(truth["pairs"]),
                      "flips": len(truth["flips"])}))


if __name__ == "__main__":
    main()
