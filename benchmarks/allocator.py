"""C allocator settings vs. page churn: a plain fine-tuning loop and an eval pass, per allocator.

    python benchmarks/allocator.py [--rounds 3] [--steps 3] [--warmup 2] [--configs default,tlearn,...]

Default: 6 configurations x 2 tasks x 3 rounds = 36 fresh processes, about 7 minutes on an
idle 2-core machine (24 minutes at a load average of 6); `--configs default,tlearn` takes a
third of that.

Each measurement is a fresh subprocess (the allocator is chosen at process start), so that
process state never leaks from one configuration to the next; the configurations are run in
interleaved rounds (order rotated each round) and medians are reported, with ratios of
medians against glibc's defaults, because the machine's speed drifts with other jobs.

Tasks:
  train  timm tf_efficientnet_lite0 (random init), model.train(), channels_last, AdamW,
         cross-entropy on a fresh random batch each step (batch 32, 224 px, fp32);
  eval   the same model, model.eval(), forward only under torch.inference_mode (batch 64).

Configurations (the default set: default, tlearn, env, jemalloc-plain, jemalloc, tcmalloc):
  default     glibc's defaults (MALLOC_*, GLIBC_TUNABLES and LD_PRELOAD removed)
  tlearn      tlearn.allocator.configure_allocator() first thing in the process
  env         MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
              MALLOC_TOP_PAD_=1073741824 (the issue's settings), then configure_allocator()
              (which must leave them alone)
  jemalloc-plain  LD_PRELOAD=libjemalloc.so.2 with jemalloc's defaults (nothing called)
  jemalloc    LD_PRELOAD=libjemalloc.so.2, then configure_allocator() (dirty decay never)
  tcmalloc    LD_PRELOAD=libtcmalloc_minimal.so.4, then configure_allocator() (leaves it alone)
  and variants of the mallopt values, for choosing them (not in the default set):
  mmap-max-0  M_MMAP_MAX=0 instead of the threshold (the fallback where a glibc refuses it)
  mmap-32mib  M_MMAP_THRESHOLD=32 MiB (glibc's documented maximum), the rest as tlearn
  trim-2gib   M_TRIM_THRESHOLD=2 GiB - 1 instead of never
  pad-default M_TOP_PAD left at glibc's default
  thresholds-only  M_MMAP_THRESHOLD only (trim threshold and top pad left at glibc's defaults)

Per run: images/s over the measured steps, minor page faults, system and user CPU seconds
over the measured steps (getrusage), peak RSS (ru_maxrss, whole process), and RSS growth
from the first measured step to the last (does a kept heap fragment and keep growing?).
Prints one JSON document.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
MIB = 1 << 20
ISSUE_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296",
             "MALLOC_TOP_PAD_": "1073741824"}
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib")

# name -> how the worker process is set up
CONFIGS = {
    "default": {},
    "tlearn": {"configure": True},
    "env": {"env": ISSUE_ENV, "configure": True},
    "jemalloc-plain": {"preload": "libjemalloc.so.2"},
    "jemalloc": {"preload": "libjemalloc.so.2", "configure": True},
    "tcmalloc": {"preload": "libtcmalloc_minimal.so.4", "configure": True},
    # mallopt variants: (param, value) pairs set through ctypes
    "mmap-max-0": {"mallopt": [(-4, 0), (-1, -1), (-2, 64 * MIB)]},
    "mmap-32mib": {"mallopt": [(-3, 32 * MIB), (-1, -1), (-2, 64 * MIB)]},
    "trim-2gib": {"mallopt": [(-3, (1 << 31) - 1), (-1, (1 << 31) - 1), (-2, 64 * MIB)]},
    "pad-default": {"mallopt": [(-3, (1 << 31) - 1), (-1, -1)]},
    "thresholds-only": {"mallopt": [(-3, (1 << 31) - 1)]},
}
DEFAULT_CONFIGS = "default,tlearn,env,jemalloc-plain,jemalloc,tcmalloc"


def find_library(name: str) -> str | None:
    for folder in LIBRARY_DIRS:
        path = Path(folder) / name
        if path.exists():
            return str(path)
    return None


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def worker(task: str, config: str, steps: int, warmup: int, batch: int, size: int) -> dict:
    """One measurement in this (fresh) process; the allocator is set up before torch is imported."""
    setup = CONFIGS[config]
    described = "defaults (nothing called)"
    if setup.get("configure"):
        from tlearn.allocator import configure_allocator
        described = configure_allocator()
    if setup.get("mallopt"):
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        results = [mallopt(param, value) for param, value in setup["mallopt"]]
        described = f"mallopt {setup['mallopt']} -> {results}"

    import resource

    import timm
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0").to(memory_format=torch.channels_last)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    if task == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            x, y = images(), torch.randint(0, 1000, (batch,))
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(images()).argmax(1)

    for _ in range(warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    rss = []
    for _ in range(steps):
        step()
        rss.append(rss_mib())
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "task": task, "config": config, "allocator": described,
        "img_per_s": steps * batch / seconds,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "sys_s": after.ru_stime - before.ru_stime,
        "user_s": after.ru_utime - before.ru_utime,
        "peak_rss_mib": after.ru_maxrss / 1024,
        "rss_growth_mib": rss[-1] - rss[0],
    }


def child_env(config: str) -> dict | None:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD"))}
    setup = CONFIGS[config]
    env.update(setup.get("env", {}))
    if "preload" in setup:
        library = find_library(setup["preload"])
        if library is None:
            return None
        env["LD_PRELOAD"] = library
    return env


def run_child(task: str, config: str, args) -> dict:
    env = child_env(config)
    command = [sys.executable, __file__, "--worker", task, config, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size if task == "train" else args.eval_batch_size)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{task}/{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], base: str) -> dict:
    keys = ("img_per_s", "minor_faults", "sys_s", "user_s", "peak_rss_mib", "rss_growth_mib")
    out = {}
    for task in dict.fromkeys(r["task"] for r in runs):
        table = {}
        for config in dict.fromkeys(r["config"] for r in runs if r["task"] == task):
            mine = [r for r in runs if r["task"] == task and r["config"] == config]
            table[config] = {"allocator": mine[0]["allocator"], "runs": len(mine),
                             **{f"median_{k}": round(statistics.median(r[k] for r in mine), 3) for k in keys},
                             "img_per_s_all": [round(r["img_per_s"], 2) for r in mine]}
        if base in table:
            for row in table.values():
                ref = table[base]
                row["speed_vs_default"] = round(row["median_img_per_s"] / ref["median_img_per_s"], 3)
                row["faults_vs_default"] = round(row["median_minor_faults"] / max(ref["median_minor_faults"], 1), 4)
                row["peak_rss_vs_default"] = round(row["median_peak_rss_mib"] / ref["median_peak_rss_mib"], 3)
        out[task] = table
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="measured steps (batches) per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps before measuring")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--tasks", default="train,eval")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        task, config = args.worker
        print(json.dumps(worker(task, config, args.steps, args.warmup, args.batch_size, args.image_size)))
        return
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}: choose from {list(CONFIGS)}")
    skipped = [c for c in configs if child_env(c) is None]
    configs = [c for c in configs if c not in skipped]
    runs = []
    started = time.perf_counter()
    for round_index in range(args.rounds):
        order = configs[round_index % len(configs):] + configs[:round_index % len(configs)]
        for task in args.tasks.split(","):
            for config in order:
                result = run_child(task, config, args)
                result["round"] = round_index
                runs.append(result)
                print(f"round {round_index} {task:5} {config:15} {result['img_per_s']:6.2f} img/s "
                      f"{result['minor_faults']:>8} faults {result['sys_s']:6.2f} s sys "
                      f"{result['peak_rss_mib']:7.0f} MiB peak", file=sys.stderr, flush=True)
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                    "python": sys.version.split()[0]},
        "settings": {"rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                     "train_batch": args.batch_size, "eval_batch": args.eval_batch_size,
                     "image_size": args.image_size, "skipped_not_installed": skipped,
                     "wall_s": round(time.perf_counter() - started, 1)},
        "summary": summarise(runs, "default"),
        "runs": runs,
    }, indent=1))


if __name__ == "__main__":
    main()
