"""Fine-tuning speed: a plain eager loop vs tlearn, and the two-stage command on photo-sized JPEGs.

    python benchmarks/finetune.py [--rounds 3] [--variants tlearn,plain,...] [--photos data/photos]

Every measurement is a fresh process, run in interleaved rounds (the order rotates each round),
and medians are reported, because this machine's speed drifts with other jobs.

  plain        the issue's plain PyTorch loop (benchmarks/allocator.py's train task: timm
               tf_efficientnet_lite0, batch 32, 224 px, channels_last, AdamW, random tensors,
               BatchNorm in train mode) with glibc's default allocator settings: images/s.
  tlearn       `tlearn train --strategy finetune --epochs 2` on the photo folder, 224 px, batch 32:
               the second epoch's images/s from metrics.csv (decoding included), and the
               two-stage command `--strategy two-stage --head-epochs 3 --epochs 4`, wall clock of
               the whole process with a fresh cache (feature and image caches built inside), its
               val top-1 and metrics.csv's time split.
  no-allocator tlearn with glibc's defaults (MALLOC_TOP_PAD_ set to glibc's own default, which
               makes tlearn leave the allocator alone).
  no-image-cache   tlearn with --image-cache-gb 0 (decoding every epoch).
  workers-N    tlearn with --workers N (N decoding processes; 0 decodes inline).
  amp-off, amp-on  tlearn with --amp off (fp32) or on (bf16); `tlearn` itself runs --amp auto.
  no-image-cache-workers-N   both.
The ratio tlearn/plain is the median of each round's ratio. Build the photo folder first:
`python benchmarks/make_photos.py` (398 JPEGs of 500x375, two CIFAR-10 classes enlarged).
`--decode` also times JPEG draft decoding on its own (large photos, decode + presize per image).
Prints one JSON document.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TLEARN_VARIANTS = {
    "tlearn": ([], {}),
    "no-allocator": ([], {"MALLOC_TOP_PAD_": "131072"}),
    "no-image-cache": (["--image-cache-gb", "0"], {}),
    "workers-0": (["--workers", "0"], {}),
    "workers-1": (["--workers", "1"], {}),
    "workers-2": (["--workers", "2"], {}),
    "no-image-cache-workers-0": (["--image-cache-gb", "0", "--workers", "0"], {}),
    "no-image-cache-workers-1": (["--image-cache-gb", "0", "--workers", "1"], {}),
    "amp-off": (["--amp", "off"], {}),  # issue 25: fp32 throughout (tlearn's default is --amp auto)
    "amp-on": (["--amp", "on"], {}),  # bf16 throughout (needs a CPU with bf16 units)
}


def clean_env(extra: dict) -> dict:
    allocator = ("GLIBC_TUNABLES", "LD_PRELOAD")
    env = {k: v for k, v in os.environ.items() if not (k.startswith("MALLOC_") or k in allocator)}
    return {**env, **extra}


def run_plain(steps: int) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "allocator.py"), "--worker", "train", "default",
               "--steps", str(steps), "--warmup", "2", "--image-size", "224", "--batch-size", "32"]
    done = subprocess.run(command, env=clean_env({}), capture_output=True, text=True, check=True)
    return {"img_per_s": json.loads(done.stdout.strip().splitlines()[-1])["img_per_s"]}


def run_tlearn(photos: Path, flags: list[str], env: dict, strategy: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        stages = (["--strategy", "finetune", "--epochs", "2"] if strategy == "finetune"
                  else ["--strategy", "two-stage", "--head-epochs", "3", "--epochs", "4"])
        command = ["/usr/bin/time", "-f", "%e %U %S %M", sys.executable, "-m", "tlearn", "train", "--data",
                   str(photos), "--model", "efficientnet_lite0", "--image-size", "224", "--batch-size", "32",
                   *stages, *flags, "--out", str(out), "--cache-dir", str(Path(scratch) / "cache"), "-q"]
        done = subprocess.run(command, env=clean_env(env), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"tlearn failed:\n{done.stderr[-3000:]}")
        wall, user, system, peak_kib = done.stderr.strip().splitlines()[-1].split()
        rows = list(csv.DictReader((out / "metrics.csv").open()))
        tuned = [r for r in rows if r["stage"] == "finetune"]
        summary = json.loads((out / "summary.json").read_text())
        split = {k: round(sum(float(r[k]) for r in tuned), 1)
                 for k in ("data_seconds", "compute_seconds", "optimizer_seconds", "eval_seconds")}
        return {"wall_s": float(wall), "user_s": float(user), "sys_s": float(system),
                "peak_rss_mib": int(peak_kib) / 1024, "img_per_s": float(tuned[-1]["images_per_s"]),
                "val_top1": summary["val_top1"], "finetune_split_s": split}


def time_decoding(count: int = 24, size: tuple[int, int] = (3000, 2000)) -> dict:
    """Decode + presize to Lite0's 256 px, full decode vs DCT-scaled draft, per image."""
    import numpy as np
    from PIL import Image

    from tlearn.data.images import open_rgb
    from tlearn.data.preprocessing import Preprocessing
    from tlearn.data.transforms import presize_transform

    prep = Preprocessing(256, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    presize = presize_transform(prep)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        paths = []
        for i in range(count):
            small = rng.integers(0, 255, (size[1] // 50, size[0] // 50, 3), dtype=np.uint8)  # smooth, photo-like
            path = Path(scratch) / f"{i}.jpg"
            Image.fromarray(small).resize(size, Image.BICUBIC).save(path, quality=90)
            paths.append(path)
        result = {}
        for name, hint in (("full", None), ("draft", prep.resize_size)):
            start = time.perf_counter()
            for path in paths:
                presize(open_rgb(path, hint))
            result[f"{name}_ms_per_image"] = round((time.perf_counter() - start) / count * 1e3, 1)
    result["photo"] = f"{size[0]}x{size[1]} JPEG q90"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="plain,tlearn")
    parser.add_argument("--photos", type=Path, default=ROOT / "data" / "photos")
    parser.add_argument("--plain-steps", type=int, default=6)
    parser.add_argument("--two-stage", action="store_true", help="time the two-stage command (else finetune)")
    parser.add_argument("--decode", action="store_true", help="also time draft decoding of large photos")
    args = parser.parse_args()
    if not args.photos.is_dir():
        raise SystemExit(f"{args.photos} not found: run python benchmarks/make_photos.py first")
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants[round_index % len(variants):] + variants[:round_index % len(variants)]
        for variant in order:
            if variant == "plain":
                runs[variant].append(run_plain(args.plain_steps))
            else:
                flags, env = TLEARN_VARIANTS[variant]
                runs[variant].append(run_tlearn(args.photos, flags, env, "two-stage" if args.two_stage else "finetune"))
            print(f"round {round_index + 1} {variant}: {json.dumps(runs[variant][-1])}", file=sys.stderr)
    report = {v: {"median_img_per_s": round(statistics.median(r["img_per_s"] for r in rs), 2),
                  "img_per_s_all": [round(r["img_per_s"], 2) for r in rs],
                  **({"median_wall_s": round(statistics.median(r["wall_s"] for r in rs), 1),
                      "wall_s_all": [r["wall_s"] for r in rs], "runs": rs} if v != "plain" else {})}
              for v, rs in runs.items()}
    if "plain" in runs:
        for variant in variants:
            if variant != "plain":
                ratios = [t["img_per_s"] / p["img_per_s"] for t, p in zip(runs[variant], runs["plain"])]
                report[variant]["ratio_vs_plain_median"] = round(statistics.median(ratios), 3)
    if args.decode:
        report["decode"] = time_decoding()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
