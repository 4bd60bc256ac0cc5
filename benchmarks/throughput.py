"""Feature-extraction throughput, images/s, same model, batch size and image size.

    python benchmarks/throughput.py [--model efficientnet_lite0] [--image-size 224] [--batch-size 32]

(a) PyTorch eager, channels_last, forward on random images already in memory, normalised;
(b) the engine tlearn extracts with (onnxruntime on CPU), on the same images as uint8 (it
    normalises them itself: (b) does a little more work than (a));
(c) tlearn's feature extraction from JPEG files (decode + resize + forward), with the
    preprocessing tlearn trains with on them (CIFAR's 32 px files: whole-image bilinear resize).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tlearn  # noqa: E402
from common import sample_cifar  # noqa: E402
from tlearn.data._folders import scan_class_folders  # noqa: E402
from tlearn.data.small_images import adapt_preprocessing  # noqa: E402
from tlearn.data.transforms import normalize_batch  # noqa: E402
from tlearn.features.backends import make_backend  # noqa: E402
from tlearn.features.extractor import FeatureExtractor  # noqa: E402
from tlearn.runtime import setup_runtime  # noqa: E402


def rate_of(run, images: int) -> float:
    """Images per second of one call of `run`."""
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def rate(forward, batches: list[torch.Tensor]) -> float:
    return rate_of(lambda: [forward(batch) for batch in batches], sum(len(b) for b in batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3,
                        help="(a), (b), (c) measured in turn this many times; medians reported, so that "
                             "drift in the machine's speed hits all three alike")
    args = parser.parse_args()
    runtime = setup_runtime("cpu")
    model = tlearn.create_model(args.model, 10, args.weights, image_size=args.image_size).eval()
    size, batch = args.image_size, args.batch_size
    images = [torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8) for _ in range(args.batches)]
    normalised = [normalize_batch(x, model.info.preprocessing) for x in images]
    eager = model.to(memory_format=torch.channels_last)
    rates: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        backend = make_backend(model, model.info.preprocessing, runtime, cache, batch_size=batch)
        files = sample_cifar(Path(tmp) / "data", batch * args.batches, 0)
        samples, _, _ = scan_class_folders(files / "train")
        prep = adapt_preprocessing(model.info.preprocessing, samples)
        extractor = FeatureExtractor(runtime, batch_size=batch, cache_dir=cache, log=lambda _: None)

        def eager_forward(x):
            with torch.inference_mode():
                return eager.forward_features(x.contiguous(memory_format=torch.channels_last))

        def from_files():
            model.info.preprocessing = prep  # as tlearn trains on these images
            extractor.extract(model, samples)

        eager_forward(normalised[0]), backend(images[0])  # warm-up: allocations, ONNX session
        from_files()
        for _ in range(args.rounds):
            rates["a"].append(rate(eager_forward, normalised))
            rates["b"].append(rate(backend, images))
            rates["c"].append(rate_of(from_files, len(samples)))
    a, b, c = (statistics.median(rates[k]) for k in "abc")
    # Ratios per round (measurements seconds apart), then their median: steadier than a ratio of medians.
    b_vs_a = statistics.median(rb / ra for ra, rb in zip(rates["a"], rates["b"]))
    c_vs_b = statistics.median(rc / rb for rb, rc in zip(rates["b"], rates["c"]))
    print(json.dumps({"model": args.model, "image_size": size, "batch_size": batch, "images": len(samples),
                      "rounds": args.rounds, "threads": torch.get_num_threads(), "engine": backend.name,
                      "jpeg_preprocessing": f"resize {prep.resize_size}, crop {prep.crop_size}, {prep.interpolation}",
                      "eager_channels_last": round(a, 1), "engine_in_memory": round(b, 1),
                      "tlearn_from_jpeg": round(c, 1), "engine_vs_eager": round(b_vs_a, 2),
                      "jpeg_vs_engine": round(c_vs_b, 2),
                      "per_round": {k: [round(v, 1) for v in rates[k]] for k in "abc"}}))


if __name__ == "__main__":
    main()
