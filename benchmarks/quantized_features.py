"""Feature extraction through an fp32, an int8 (static, calibrated) and PyTorch's bf16 graph, and the probe each gives.

    python benchmarks/quantized_features.py [--model efficientnet_lite0] [--image-size 224]
                                            [--train 1000] [--val 500] [--calibration 128]

Issue 25, part 3: would a quantized graph extract features faster on a CPU with VNNI/bf16 units,
and what would it cost the linear probe? On a seeded, stratified CIFAR-10 sample (benchmarks/
common.py), decoded once with tlearn's preprocessing into memory, the backbone runs as
(a) the fp32 onnxruntime graph tlearn extracts with (features/backends.py);
(b) that graph quantized by onnxruntime's own tools (quant_pre_process, then quantize_static: QDQ,
    per-channel int8 weights, uint8 activations, MinMax calibration on --calibration training images);
(c) PyTorch eager under bf16 autocast, channels_last (onnxruntime's CPU provider has no bf16
    convolutions on x86, so PyTorch's is the bf16 graph there is to measure).
Each extracts train and val (rate over both); the L-BFGS head tlearn fits (features/head_solver.py)
is solved on each feature set and scored on val. Prints one JSON line, with the adoption gate:
val top-1 within 0.3 points of fp32 and faster by at least 10%.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tlearn  # noqa: E402
from amp import cpu_name  # noqa: E402
from common import ROOT, sample_cifar  # noqa: E402
from tlearn.data import eval_transform_uint8, make_loader  # noqa: E402
from tlearn.data._folders import scan_class_folders  # noqa: E402
from tlearn.data.small_images import adapt_preprocessing  # noqa: E402
from tlearn.data.transforms import normalize_batch  # noqa: E402
from tlearn.features.backends import _exported_backbone, _session  # noqa: E402
from tlearn.features.head_solver import fit_linear_head_lbfgs  # noqa: E402
from tlearn.runtime import cpu_bf16_units  # noqa: E402

GATE_POINTS, GATE_SPEEDUP = 0.3, 1.10


def decoded(folder: Path, prep, batch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    samples, _, _ = scan_class_folders(folder)
    loader = make_loader(samples, eval_transform_uint8(prep), batch_size=batch, shuffle=False, workers=0,
                         device=torch.device("cpu"))
    images, labels = zip(*loader)
    return list(images), torch.cat(labels)


def onnx_features(path: Path, batches: list[torch.Tensor], batch: int) -> tuple[torch.Tensor, float]:
    session = _session(str(path), torch.get_num_threads())

    def run(images: torch.Tensor) -> torch.Tensor:  # the graph's batch is fixed: pad a short one, trim
        count = len(images)
        if count < batch:
            images = torch.cat([images, images.new_zeros(batch - count, *images.shape[1:])])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0][:count])

    run(batches[0])  # warm-up
    start = time.perf_counter()
    features = torch.cat([run(images) for images in batches])
    return features, time.perf_counter() - start


@torch.no_grad()  # not inference_mode: the head solver takes gradients through these features
def bf16_features(model, prep, batches: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
    model = model.eval().to(memory_format=torch.channels_last)

    def forward(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.forward_features(normalize_batch(images, prep).contiguous(
                memory_format=torch.channels_last)).float()

    forward(batches[0])  # warm-up: oneDNN builds its bf16 kernels
    start = time.perf_counter()
    features = torch.cat([forward(images) for images in batches])
    return features, time.perf_counter() - start


def quantize(fp32: Path, out: Path, calibration: list[torch.Tensor]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": images.numpy()} for images in calibration])

        def get_next(self):
            return next(self.items, None)

    prepared = out / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantized = out / "int8.onnx"
    quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return quantized


def probe(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], classes: int) -> float:
    head = torch.nn.Linear(features["train"].shape[1], classes)
    solved = fit_linear_head_lbfgs(head, features["train"].float(), labels["train"], features["val"].float(),
                                   labels["val"])
    return solved.val_top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--calibration", type=int, default=128, help="training images the int8 ranges are set on")
    args = parser.parse_args()
    data = sample_cifar(ROOT / "data" / f"amp-cifar-{args.train}-{args.val}", args.train, args.val)
    model = tlearn.create_model(args.model, 10, args.weights, image_size=args.image_size).eval()
    samples, _, _ = scan_class_folders(data / "train")
    prep = adapt_preprocessing(model.info.preprocessing, samples)
    batches, labels = {}, {}
    for split in ("train", "val"):
        batches[split], labels[split] = decoded(data / split, prep, args.batch_size)
    record = {"cpu": cpu_name(), "bf16_units": list(cpu_bf16_units()), "threads": torch.get_num_threads(),
              "model": args.model, "image_size": args.image_size, "train": len(labels["train"]),
              "val": len(labels["val"]), "load_average": os.getloadavg(), "graphs": {}}
    with tempfile.TemporaryDirectory() as folder:
        fp32 = _exported_backbone(model, prep, args.batch_size, Path(folder))
        calibration = batches["train"][:max(1, args.calibration // args.batch_size)]
        graphs = {"onnx_fp32": lambda b: onnx_features(fp32, b, args.batch_size)}
        int8 = quantize(fp32, Path(folder), calibration)
        graphs["onnx_int8"] = lambda b: onnx_features(int8, b, args.batch_size)
        graphs["torch_bf16"] = lambda b: bf16_features(model, prep, b)
        for name, extract in graphs.items():
            features, seconds = {}, 0.0
            for split in ("train", "val"):
                features[split], took = extract(batches[split])
                seconds += took
            images = len(labels["train"]) + len(labels["val"])
            record["graphs"][name] = {"images_per_s": round(images / seconds, 1),
                                      "val_top1": round(probe(features, labels, 10), 4)}
    base = record["graphs"]["onnx_fp32"]
    for result in record["graphs"].values():
        result["speedup"] = round(result["images_per_s"] / base["images_per_s"], 2)
        result["top1_points"] = round(100 * (result["val_top1"] - base["val_top1"]), 2)
        result["passes_gate"] = result["speedup"] >= GATE_SPEEDUP and abs(result["top1_points"]) <= GATE_POINTS
    record["load_average_after"] = os.getloadavg()
    print(json.dumps(record))


if __name__ == "__main__":
    np.random.seed(0)
    main()
