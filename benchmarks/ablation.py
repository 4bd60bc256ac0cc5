"""Fine-tuning techniques, each on its own against the defaults, on two real data sets.

    python benchmarks/ablation.py [--datasets cifar10,digits] [--seeds 0,1] [--variants default,mixup,...]
                                  [--epochs 3] [--out data/ablation]

Data sets (built or named, nothing downloaded):
  cifar10  2,000 train / 1,000 val CIFAR-10 JPEGs sampled (stratified, seed 0) from
           ../shared/data/cifar10-jpg-train.tar.gz, trained at 96 px (resized whole: they are 32 px).
  digits   scikit-learn's 8x8 digits (1,797 images, seeded 90/10 split: the seed changes the split),
           trained at 64 px with `--augment none` as its baseline (see DATASETS).

Every run is `tlearn train --model efficientnet_lite0 --strategy two-stage --epochs E` (the
probe is the L-BFGS head on cached features, then E fine-tuning epochs with the default
random-resized-crop + flip) plus the variant's flags, `--no-report` (the report is not a
technique), each a fresh process. `--jobs J` runs J of them side by side, each with
OMP_NUM_THREADS = cores / J (on 2 cores, 2 one-thread runs get more done than one two-thread
run; the wall times are then those of one-thread runs). One warm-up probe per data set fills the
feature and decoded-image caches first, so the wall times compare the techniques, not the caches.
`tta` is `tlearn eval --tta` on the default run's model (no training of its own).

Prints one JSON line per run (also appended to OUT/results.jsonl, so separate invocations add
up) and, at the end, a Markdown table of every result in that file (the latest per data set,
variant and seed): val top-1 (best epoch) mean and spread (min–max) over the seeds, and the
median wall time of the whole command. `--table` only prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, sample_cifar

VARIANTS = {
    "default": [],
    "lr-find": ["--lr", "find"],
    "gradual-unfreeze": ["--unfreeze", "gradual"],
    "layer-decay-0.75": ["--layer-decay", "0.75"],
    "randaugment": ["--augment", "randaugment"],
    "trivialaugment": ["--augment", "trivialaugment"],
    "autoaugment": ["--augment", "autoaugment"],
    "random-erasing-0.25": ["--random-erasing", "0.25"],
    "mixup-0.2": ["--mixup", "0.2"],
    "cutmix-1.0": ["--cutmix", "1.0"],
    "ema-0.999": ["--ema-decay", "0.999"],
    "accumulate-2": ["--accumulate", "2"],
    "tta": None,  # eval of the default run with --tta
}
# name: (--data, image size, the baseline's own flags). Digits fine-tune without augmentation, as
# `tlearn demo` does: random-resized-crop + flip mirrors and cuts 8x8 digits, and with it no
# fine-tuning epoch beat the probe (both seeds; the policies below still add their crop + flip).
DATASETS = {"cifar10": ("data/ablation/cifar10", 96, []), "digits": ("digits", 64, ["--augment", "none"])}


def data_source(name: str) -> str:
    path = DATASETS[name][0]
    if name != "cifar10":
        return path
    folder = ROOT / path
    if not (folder / ".complete").is_file():
        sample_cifar(folder, 2000, 1000, seed=0)
        (folder / ".complete").write_text("")
    return str(folder)


THREADS = {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}  # set by main from --jobs


def tlearn(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tlearn", *args], capture_output=True, text=True,
                          env={**os.environ, **THREADS})
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"tlearn {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                         f"{done.stderr[-3000:]}")
    return seconds, done


def train(dataset: str, variant: str, seed: int, epochs: int, out: Path, cache: Path) -> dict:
    source, size, base = data_source(dataset), DATASETS[dataset][1], DATASETS[dataset][2]
    run = out / dataset / f"{variant}-seed{seed}"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run folder every time
    seconds, _ = tlearn("train", "--data", source, "--model", "efficientnet_lite0", "--image-size", str(size),
                        "--strategy", "two-stage", "--epochs", str(epochs), "--seed", str(seed), "--no-report",
                        "--cache-dir", str(cache), "--out", str(run), *base, *VARIANTS[variant])
    summary = json.loads((run / "summary.json").read_text())
    row = {"dataset": dataset, "variant": variant, "seed": seed, "val_top1": summary["val_top1"],
           "probe_top1": summary["stages"][0]["val_top1"], "seconds": round(seconds, 1), "run": str(run)}
    if variant == "lr-find":
        resolved = yaml.safe_load((run / "config.yaml").read_text()).get("resolved", {})
        row["lr_found"] = resolved.get("lr_found")
    return row


def tta(dataset: str, seed: int, out: Path, cache: Path) -> dict:
    run = out / dataset / f"default-seed{seed}"
    source = data_source(dataset)
    data = str(Path(source) / "val") if dataset == "cifar10" else source
    args = ["eval", str(run), "--json", "--tta", "--data", data]
    seconds, done = tlearn(*args)
    result = json.loads(done.stdout)
    return {"dataset": dataset, "variant": "tta", "seed": seed, "val_top1": result["top1_tta"],
            "plain_top1": result["top1"], "seconds": round(seconds, 1), "run": str(run)}


def warm_caches(dataset: str, out: Path, cache: Path) -> None:
    source, size = data_source(dataset), DATASETS[dataset][1]
    shutil.rmtree(out / dataset / "warm-up", ignore_errors=True)
    tlearn("train", "--data", source, "--model", "efficientnet_lite0", "--image-size", str(size), "--strategy",
           "linear-probe", "--no-report", "--cache-dir", str(cache), "--out", str(out / dataset / "warm-up"))


def table(rows: list[dict], datasets: list[str], variants: list[str]) -> str:
    head = "| technique | " + " | ".join(f"{d} val top-1 | {d} wall s" for d in datasets) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(datasets))]
    for variant in variants:
        cells = []
        for dataset in datasets:
            mine = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant]
            if not mine:
                cells += ["–", "–"]
                continue
            top1 = [r["val_top1"] for r in mine]
            cells.append(f"{statistics.mean(top1):.4f} ({min(top1):.4f}–{max(top1):.4f})")
            cells.append(f"{statistics.median(r['seconds'] for r in mine):.0f}")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="cifar10,digits")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "data" / "ablation" / "runs"))
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument("--table", action="store_true", help="print the table of OUT/results.jsonl and stop")
    args = parser.parse_args()
    datasets, variants = args.datasets.split(","), args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    out, cache = Path(args.out), Path(args.out) / "cache"
    results = out / "results.jsonl"
    THREADS["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))
    if not args.table:
        run_all(datasets, variants, seeds, args.epochs, out, cache, results, args.jobs)
    latest = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        latest[row["dataset"], row["variant"], row["seed"]] = row
    print(table(list(latest.values()), datasets, [v for v in VARIANTS if v in variants]))


def run_all(datasets: list[str], variants: list[str], seeds: list[int], epochs: int, out: Path, cache: Path,
            results: Path, jobs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def record(row: dict) -> None:
        with lock:
            print(json.dumps(row), flush=True)
            with results.open("a") as file:
                file.write(json.dumps(row) + "\n")

    for dataset in datasets:
        warm_caches(dataset, out, cache)
        trainings = [(variant, seed) for variant in variants if variant != "tta" for seed in seeds]
        with ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(train, dataset, variant, seed, epochs, out, cache)
                           for variant, seed in trainings]:
                record(future.result())
        if "tta" in variants:
            with ThreadPoolExecutor(jobs) as pool:
                done = [seed for seed in seeds if (out / dataset / f"default-seed{seed}" / "summary.json").is_file()]
                for future in [pool.submit(tta, dataset, seed, out, cache) for seed in done]:
                    record(future.result())


if __name__ == "__main__":
    main()
