"""`tlearn predict` over many files: the onnxruntime engine against PyTorch eager, images/s.

    python benchmarks/predict_engine.py [--files 1000] [--model efficientnet_lite0] [--image-size 224]

Draws `--files` CIFAR-10 JPEGs (seeded, stratified; data/predict_engine, git-ignored) and uses the
linear probe benchmarks/serve.py trains (trained here if absent), then times `tlearn predict RUN
FOLDER --output F.csv` once with `--engine onnx` and once with `--engine torch`, each in a process of
its own (the engine's graph export is done before timing; decoding is included). Checks the two
CSVs give the same labels, and prints one JSON line.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, sample_cifar
from serve import trained_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-mini"))
    args = parser.parse_args()
    run = trained_run(args.data, args.model, args.image_size)
    folder = ROOT / "data" / "predict_engine" / str(args.files)
    if not (folder / "train").is_dir():
        sample_cifar(folder, args.files, 0, seed=1)
    subprocess.run([sys.executable, "-m", "tlearn", "predict", str(run), str(folder / "train"), "--engine", "onnx",
                    "-q"], check=True, capture_output=True)  # exports and caches the engine graph, untimed
    seconds, labels = {}, {}
    for engine in ("onnx", "torch"):
        output = folder / f"{engine}.csv"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tlearn", "predict", str(run), str(folder / "train"), "--engine",
                        engine, "--output", str(output), "-q"], check=True, capture_output=True)
        seconds[engine] = time.perf_counter() - start
        labels[engine] = [row[1] for row in csv.reader(output.open())][1:]
    print(json.dumps({"model": args.model, "image_size": args.image_size, "files": args.files,
                      "images_per_s": {engine: round(args.files / value, 1) for engine, value in seconds.items()},
                      "seconds": {engine: round(value, 1) for engine, value in seconds.items()},
                      "speedup": round(seconds["torch"] / seconds["onnx"], 2),
                      "same_labels": sum(a == b for a, b in zip(labels["onnx"], labels["torch"])) / args.files}))


if __name__ == "__main__":
    main()
