"""The L-BFGS head at ImageNet scale, on memory-mapped features larger than this process's memory.

    python benchmarks/head_at_scale.py write             # 1.28 M x 1280 train + 50 k val, float16 shards
    python benchmarks/head_at_scale.py pass              # one loss + gradient evaluation over all rows
    python benchmarks/head_at_scale.py chunks --rows 65536   # one evaluation per chunk size
    python benchmarks/head_at_scale.py solve --rows 128000 --l2 1e-3 --max-iter 20

Features are a random projection of class-dependent latents, so the problem is learnable:
1,000 class means in a 64-d latent space, each row its class mean plus Gaussian noise,
projected to 1280-d by one fixed random matrix, then ReLU (as pre-logits features are).
They are written chunk by chunk (never the whole matrix in RAM) under --dir, default
data/head_at_scale/ (git-ignored). Each command but `write` prints one JSON line with its
wall seconds and memory, MiB: peak RSS (ru_maxrss), and RssAnon (the process's own memory) and
RssFile (mapped file pages it touched, the torch libraries included) from /proc/self/status at
the start and at their peaks, sampled every 20 ms.
"""
from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlearn.features._store import ShardedFeatures, open_features, write_feature_shards
from tlearn.features.head_solver import CHUNK_ROWS, _Chunks, _loss_and_grad, fit_linear_head_lbfgs

# _Chunks and _loss_and_grad are the solver's own chunking and closure: `pass` times exactly one
# L-BFGS function evaluation, not a copy of it.

ROOT = Path(__file__).resolve().parents[1]
LATENT_DIM = 64
NOISE = 2.0  # latent noise per dimension; class means are N(0, 1): hard enough to not be separable
SHARD_ROWS = 65536  # 168 MB of float16 per shard at 1280 features


def generate(rows: int, dim: int, classes: int, seed: int, chunk: int = SHARD_ROWS
             ) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """Labels (all at once: 8 bytes a row) and a generator of feature chunks for them."""
    rng = torch.Generator().manual_seed(0)  # the same classes and projection for every split
    means = torch.randn(classes, LATENT_DIM, generator=rng)
    projection = torch.randn(LATENT_DIM, dim, generator=rng) / LATENT_DIM ** 0.5
    noise = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (rows,), generator=noise)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, rows, chunk):
            y = labels[start:start + chunk]
            latent = means[y] + NOISE * torch.randn(len(y), LATENT_DIM, generator=noise)
            yield torch.relu(latent @ projection).numpy()
    return labels.numpy(), chunks()


def write(args) -> None:
    for split, rows, seed in (("train", args.rows or 1_281_167, 1), ("val", 50_000, 2)):
        began = time.perf_counter()
        labels, chunks = generate(rows, args.dim, args.classes, seed)
        write_feature_shards(args.dir / split, chunks, dtype=args.dtype)
        np.save(args.dir / split / "labels.npy", labels)
        print(f"{split}: {rows} x {args.dim} {args.dtype} in {time.perf_counter() - began:.1f} s")


class FirstRows:
    """The first `rows` rows of a store: a documented fraction without writing a second copy."""

    def __init__(self, store: ShardedFeatures, rows: int):
        self.store, self.rows, self.dim, self.passes = store, min(rows, len(store)), store.dim, 0

    def __len__(self) -> int:
        return self.rows

    def iter_chunks(self, rows: int) -> Iterator[torch.Tensor]:
        self.passes += 1
        left = self.rows
        for chunk in self.store.iter_chunks(rows):
            if left <= 0:
                return
            yield chunk[:left]
            left -= len(chunk)


def load(args, split: str, rows: int | None = None) -> tuple[FirstRows, torch.Tensor]:
    store = FirstRows(open_features(args.dir / split), rows or 1 << 62)
    labels = torch.from_numpy(np.load(args.dir / split / "labels.npy")[:len(store)])
    return store, labels


MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile")


def read_memory() -> dict[str, int]:
    """This process's resident memory now, KiB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in MEMORY_FIELDS:
            values[name] = int(value.split()[0])
    return values


@contextmanager
def memory_peaks(interval: float = 0.02) -> Iterator[dict[str, int]]:
    """Peaks sampled in a thread: the high point is inside a chunk's backward, not between chunks.

    Yields a dict filled in on exit: the memory at the start (after imports, labels, mapping) and
    the peaks, MiB, with ru_maxrss (the kernel's own peak RSS of the whole process).
    """
    start, peaks, done = read_memory(), dict.fromkeys(MEMORY_FIELDS, 0), threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            for name, kib in read_memory().items():
                peaks[name] = max(peaks[name], kib)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    report: dict[str, int] = {}
    try:
        yield report
    finally:
        done.set()
        thread.join()
        report |= {f"start_{name}_mib": round(kib / 1024) for name, kib in start.items()}
        report |= {f"peak_{name}_mib": round(kib / 1024) for name, kib in peaks.items()}
        report["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def one_pass(train: _Chunks, classes: int) -> float:
    """Seconds of one L-BFGS function evaluation (loss and gradient over every row)."""
    weight = (0.01 * torch.randn(classes, train.dim)).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    began = time.perf_counter()
    _loss_and_grad(train, weight, bias, 1e-3)
    return time.perf_counter() - began


def measure_pass(args) -> None:
    store, labels = load(args, "train", args.rows)
    with memory_peaks() as memory:
        seconds = one_pass(_Chunks(store, labels, torch.float32, args.chunk_rows), args.classes)
    gib = len(store) * store.dim * store.store.shard(0).dtype.itemsize / 2 ** 30
    print(json.dumps({"rows": len(store), "dim": store.dim, "classes": args.classes, "stored_gib": round(gib, 2),
                      "chunk_rows": args.chunk_rows, "threads": torch.get_num_threads(),
                      "pass_s": round(seconds, 2)} | memory))


def measure_chunks(args) -> None:
    store, labels = load(args, "train", args.rows)
    one_pass(_Chunks(store, labels, torch.float32, CHUNK_ROWS), args.classes)  # warm the page cache
    for rows in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
        with memory_peaks() as memory:
            seconds = one_pass(_Chunks(store, labels, torch.float32, rows), args.classes)
        print(json.dumps({"rows": len(store), "chunk_rows": rows, "pass_s": round(seconds, 2)} | memory),
              flush=True)


def solve(args) -> None:
    train, train_y = load(args, "train", args.rows)
    val, val_y = load(args, "val")
    head = nn.Linear(train.dim, args.classes)
    with memory_peaks() as memory:
        began = time.perf_counter()
        result = fit_linear_head_lbfgs(head, train, train_y, val, val_y, grid=(args.l2,), max_iter=args.max_iter,
                                       chunk_rows=args.chunk_rows)
        seconds = time.perf_counter() - began
    evaluations = train.passes - 1  # the other pass over the training rows scores the solution
    print(json.dumps({"rows": len(train), "classes": args.classes, "l2": args.l2, "max_iter": args.max_iter,
                      "evaluations": evaluations, "solve_s": round(seconds, 1),
                      "train_top1": round(result.train_top1, 4), "val_top1": round(result.val_top1, 4),
                      "val_loss": round(result.val_loss, 4)} | memory))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("write", "pass", "chunks", "solve"))
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "head_at_scale")
    parser.add_argument("--rows", type=int, default=None, help="the first ROWS training rows (default all)")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="storage type")
    parser.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"write": write, "pass": measure_pass, "chunks": measure_chunks, "solve": solve}[args.command](args)


if __name__ == "__main__":
    main()
