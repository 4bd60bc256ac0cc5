"""The tutorial's frozen-backbone loop vs tlearn's linear probe, same images, same model.

    python benchmarks/linear_probe.py [--epochs 5] [--train-images 1000] [--val-images 500] [--image-size 224]

(a) the tutorial as written: Resize(size) + ToTensor() with no normalisation, batch 32,
    SGD(head, lr=1e-3, momentum=0.9), model.train() every epoch with everything but the head
    frozen (so BatchNorm statistics drift), the backbone recomputed for every batch;
(b) the whole `tlearn train --strategy linear-probe` command (a fresh process: imports, a fresh
    feature cache, the report), then the same command again on the warm cache.
Prints one JSON line: seconds, accuracy, speedup (the tutorial's loop, timed in-process without
its imports, against tlearn's whole cold command) and the warm/cold ratio.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tlearn  # noqa: E402
from common import sample_cifar  # noqa: E402


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


def tlearn_command(data_dir: Path, epochs: int, size: int, cache: Path, out: Path) -> tuple[float, float]:
    """The whole `tlearn train` command as a user runs it: wall clock from process start to exit
    (imports, data listing, extraction or cache load, the L-BFGS sweep, the report)."""
    command = [sys.executable, "-m", "tlearn", "train", "--data", str(data_dir), "--model", "efficientnet_lite0",
               "--strategy", "linear-probe", "--epochs", str(epochs), "--image-size", str(size),
               "--cache-dir", str(cache), "--out", str(out), "-q"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    assert (out / "report.html").is_file()
    return seconds, json.loads((out / "summary.json").read_text())["val_top1"]


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
        cache = Path(tmp) / "cache"
        ours_s, ours_acc = tlearn_command(data_dir, args.epochs, args.image_size, cache, Path(tmp) / "cold")
        warm_s, warm_acc = tlearn_command(data_dir, args.epochs, args.image_size, cache, Path(tmp) / "warm")
        assert warm_acc == ours_acc
        result = {"epochs": args.epochs, "train_images": args.train_images, "val_images": args.val_images,
                  "image_size": args.image_size, "threads": torch.get_num_threads(),
                  "tlearn_seconds": round(ours_s, 1), "tlearn_accuracy": round(ours_acc, 4),
                  "tlearn_warm_seconds": round(warm_s, 1), "warm_vs_cold": round(warm_s / ours_s, 3)}
        if not args.skip_tutorial:
            tut_s, tut_acc = tutorial_loop(data_dir, args.epochs, args.image_size)
            result.update({"tutorial_seconds": round(tut_s, 1), "tutorial_accuracy": round(tut_acc, 4),
                           "speedup": round(tut_s / ours_s, 1),
                           "accuracy_gain_points": round(100 * (ours_acc - tut_acc), 1)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
