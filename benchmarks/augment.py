"""What each --augment policy and --random-erasing cost per training image, on one CPU thread.

    python benchmarks/augment.py [--images 200] [--repeats 3]

The training transform as fine-tuning runs it on images served by the decoded-image cache
(presized uint8, data/image_cache.py), with the bundled Lite0's preprocessing at 224 px, for
two kinds of image from the shared cifar10-mini folder: (a) the 32 px originals (whole-image
resize, small_images.py) and (b) the same enlarged to 500x375 (bicubic) and presized, like
benchmarks/make_photos.py's photos. Prints CPU ms per image (process time, so other load on a shared machine
barely moves it; median of the repeats) as JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402
from tlearn.data.transforms import presize_transform, train_transform  # noqa: E402
from tlearn.models.factory import create_model  # noqa: E402

FOLDER = ROOT.parent / "shared" / "data" / "cifar10-mini" / "train"
SETTINGS = [("default", 0.0), ("default", 0.25), ("randaugment", 0.0), ("trivialaugment", 0.0),
            ("autoaugment", 0.0), ("randaugment", 0.25)]


def presized(images: list[Image.Image], prep) -> list[Image.Image]:
    """What the decoded-image cache would hand the training transform."""
    presize = presize_transform(prep)
    return [Image.fromarray(presize(image).permute(1, 2, 0).numpy(), "RGB") for image in images]


def milliseconds_per_image(images: list[Image.Image], transform, repeats: int) -> float:
    times = []
    for repeat in range(repeats):
        torch.manual_seed(repeat)
        start = time.process_time()
        for image in images:
            transform(image)
        times.append((time.process_time() - start) * 1000 / len(images))
    return round(statistics.median(times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not FOLDER.is_dir():
        raise SystemExit(f"{FOLDER} not found: the benchmark reads the project's shared data folder")
    torch.set_num_threads(1)
    files = sorted(FOLDER.glob("*/*.jpg"))[:args.images]
    originals = [Image.open(path).convert("RGB") for path in files]
    prep = create_model("efficientnet_lite0", num_classes=10).info.preprocessing
    kinds = {"cifar_32px": (prep.for_small_images(), originals),
             "photo_500x375": (prep, [image.resize((500, 375), Image.BICUBIC) for image in originals])}
    results = {"images": len(files), "preprocessing": prep.to_dict(), "threads": 1}
    for kind, (kind_prep, images) in kinds.items():
        images = presized(images, kind_prep)
        results[kind] = {f"{augment}+erasing{erasing:g}": milliseconds_per_image(
            images, train_transform(kind_prep, augment, erasing), args.repeats) for augment, erasing in SETTINGS}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
