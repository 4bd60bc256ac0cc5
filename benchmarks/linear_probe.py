"""The tutorial's frozen-backbone loop vs tlearn's linear probe, same images, same model.

    python benchmarks/linear_probe.py [--epochs 5] [--train-images 1000] [--val-images 500] [--image-size 224]

(a) the tutorial as written: Resize(size) + ToTensor() with no normalisation, batch 32,
    SGD(head, lr=1e-3, momentum=0.9), model.train() every epoch with everything but the head
    frozen (so BatchNorm statistics drift), the backbone recomputed for every batch;
(b) tlearn.fit(strategy="linear-probe") with a fresh feature cache (extraction is timed).
Prints one JSON line: wall seconds (training + evaluation), accuracy and speedup.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sample_cifar  # noqa: E402

import tlearn  # noqa: E402
from tlearn.data import load_splits  # noqa: E402


def tutorial_loop(data_dir: Path, epochs: int, size: int) -> tuple[float, float]:
    start = time.perf_counter()
    model = tlearn.create_model("efficientnet_lite0", 10)  # the same pretrained backbone and a new head
    for parameter in model.backbone.parameters():
        parameter.requires_grad = False
    transform = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(data_dir / "train", transform), batch_size=32,
                                        shuffle=True)
    val = torch.utils.data.DataLoader(datasets.ImageFolder(data_dir / "val", transform), batch_size=32)
    optimizer = torch.optim.SGD(model.head.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for images, labels in train:
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in val:
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    return time.perf_counter() - start, correct / total


def tlearn_probe(data_dir: Path, epochs: int, size: int, cache: Path) -> tuple[float, float]:
    start = time.perf_counter()
    data = load_splits(str(data_dir), val_split=0.1, seed=0)
    model = tlearn.create_model("efficientnet_lite0", len(data.class_names), image_size=size)
    summary = tlearn.fit(model, data, strategy="linear-probe", epochs=epochs, cache_dir=str(cache),
                         report=False, log=lambda _: None)
    return time.perf_counter() - start, summary["val_top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--skip-tutorial", action="store_true", help="time only tlearn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = sample_cifar(Path(tmp) / "data", args.train_images, args.val_images)
        ours_s, ours_acc = tlearn_probe(data_dir, args.epochs, args.image_size, Path(tmp) / "cache")
        result = {"epochs": args.epochs, "train_images": args.train_images, "val_images": args.val_images,
                  "image_size": args.image_size, "threads": torch.get_num_threads(),
                  "tlearn_seconds": round(ours_s, 1), "tlearn_accuracy": round(ours_acc, 4)}
        if not args.skip_tutorial:
            tut_s, tut_acc = tutorial_loop(data_dir, args.epochs, args.image_size)
            result.update({"tutorial_seconds": round(tut_s, 1), "tutorial_accuracy": round(tut_acc, 4),
                           "speedup": round(tut_s / ours_s, 1),
                           "accuracy_gain_points": round(100 * (ours_acc - tut_acc), 1)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
