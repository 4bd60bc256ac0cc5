"""fp32 against bf16 autocast on this CPU: training-step and inference rates, and the demo under --amp.

    python benchmarks/amp.py [--models resnet50,efficientnet_lite0] [--image-size 224] [--batch-size 32]
                             [--steps 3] [--demo off,auto,on] [--seeds 0] [--demo-threads N]

(a) per model (weights none: speed only): images/s of a training step (forward, backward, AdamW
    step; channels_last) in fp32 and in bf16, measured exactly as `--amp auto` measures a stage
    (training/_precision.py: interleaved, one untimed warm-up step, the median of --steps), and of
    an inference forward, the same way; and what auto would choose;
(b) `tlearn demo` under each --amp mode of --demo and each of --seeds, in a fresh process: its wall
    time, its best val top-1 and top-5 (overall and per stage) and what auto chose (the demo's
    two-stage fine-tuning, bundled Lite0 on digits); several seeds give fp32's seed spread, which
    bf16's figures should fall within.
Prints one JSON line, with the CPU's model name and bf16 units.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import tlearn
from tlearn.config import TrainConfig
from tlearn.runtime import Runtime, cpu_bf16_units
from tlearn.training._precision import WARMUP_STEPS, choose_precision, measure_step_rates


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


@torch.inference_mode()
def inference_rates(model, images: torch.Tensor, steps: int) -> dict[str, float]:
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for round_index in range(WARMUP_STEPS + steps):
        for name in seconds:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                model(images)
            if round_index >= WARMUP_STEPS:
                seconds[name].append(time.perf_counter() - start)
    return {name: len(images) / statistics.median(values) for name, values in seconds.items()}


def model_rates(name: str, size: int, batch: int, steps: int) -> dict:
    model = tlearn.create_model(name, 10, "none", image_size=size).to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (batch,))
    runtime = Runtime(torch.device("cpu"), None, True, amp_candidate=torch.bfloat16, bf16_units=cpu_bf16_units())
    train = measure_step_rates(model, (images, targets), torch.nn.CrossEntropyLoss(), runtime, TrainConfig(),
                               steps=steps)
    infer = inference_rates(model.eval(), images, steps)
    return {"model": name, "train_fp32": round(train["fp32"], 2), "train_bf16": round(train["bf16"], 2),
            "train_speedup": round(train["bf16"] / train["fp32"], 2), "auto_chooses": choose_precision(train, "bf16"),
            "infer_fp32": round(infer["fp32"], 2), "infer_bf16": round(infer["bf16"], 2),
            "infer_speedup": round(infer["bf16"] / infer["fp32"], 2)}


def demo_run(mode: str, seed: int, out: Path, threads: int | None = None) -> dict:
    start, run = time.perf_counter(), out / f"{mode}-{seed}"
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run([sys.executable, "-m", "tlearn", "demo", "--amp", mode, "--seed", str(seed), "--out",
                             str(run), "--no-report"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-2000:])
    summary = json.loads((run / "summary.json").read_text())
    return {"amp": mode, "seed": seed, "wall_seconds": round(time.perf_counter() - start, 1),
            "val_top1": summary["val_top1"], "val_top5": summary["val_top5"], "train_seconds": summary["train_seconds"],
            "stage_results": summary["stages"],
            "stages": {key: value["precision"] for key, value in summary["amp"]["stages"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision (after one warm-up)")
    parser.add_argument("--demo", default="off,auto,on", help="--amp modes to run the demo under ('' for none)")
    parser.add_argument("--seeds", default="0", help="the demo's seeds, e.g. 0,1,2 for the seed spread")
    parser.add_argument("--demo-threads", type=int, default=None,
                        help="OMP_NUM_THREADS for the demo runs (1 on a shared machine: teams of 2 stall under load)")
    args = parser.parse_args()
    torch.manual_seed(0)
    units = cpu_bf16_units()
    record = {"cpu": cpu_name(), "bf16_units": list(units), "threads": torch.get_num_threads(),
              "image_size": args.image_size, "batch_size": args.batch_size, "load_average": os.getloadavg()}
    if not units:
        record["note"] = "no bf16 units: bf16 is emulated here and --amp auto keeps fp32 without timing"
    record["models"] = [model_rates(name, args.image_size, args.batch_size, args.steps)
                        for name in filter(None, args.models.split(","))]
    with tempfile.TemporaryDirectory() as folder:
        record["demo"] = [demo_run(mode, int(seed), Path(folder), args.demo_threads) for seed in args.seeds.split(",")
                          for mode in filter(None, args.demo.split(","))]
    record["load_average_after"] = os.getloadavg()
    print(json.dumps(record))


if __name__ == "__main__":
    main()
