"""CUDA-only checks: extraction throughput fp32 vs AMP (bf16/fp16), channels_last on and off.

    python benchmarks/gpu_check.py [--models efficientnet_lite0 resnet50] [--batch-size 128]

Prints one JSON line per (model, precision, memory format): images/s of the backbone
forward on random uint8 images already on the GPU, through tlearn's TorchBackend (which
normalises them on the GPU).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import tlearn
from tlearn.features.backends import TorchBackend
from tlearn.runtime import Runtime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50", "convnext_tiny"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    for name in args.models:
        weights = "default" if name == "efficientnet_lite0" else "none"
        model = tlearn.create_model(name, 10, weights).to(device).eval()
        size = model.info.preprocessing.crop_size
        images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, device=device)
        for dtype in (None, torch.bfloat16, torch.float16):
            for channels_last in (False, True):
                model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                engine = TorchBackend(model, model.info.preprocessing, Runtime(device, dtype, channels_last))
                for _ in range(3):
                    engine(images)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.batches):
                    out = engine(images)
                torch.cuda.synchronize()
                rate = args.batches * args.batch_size / (time.perf_counter() - start)
                print(json.dumps({"gpu": torch.cuda.get_device_name(), "model": name, "image_size": size,
                                  "batch": args.batch_size,
                                  "amp": str(dtype).replace("torch.", "") if dtype else "fp32",
                                  "channels_last": channels_last, "images_per_s": round(rate, 1),
                                  "finite": bool(torch.isfinite(out).all())}), flush=True)


if __name__ == "__main__":
    main()
