"""`tlearn serve` against the server a tutorial reader writes, driven by the same closed-loop client.

    python benchmarks/serve.py [--data ../shared/data/cifar10-mini] [--model efficientnet_lite0]
                               [--image-size 224] [--clients 1,4,16] [--requests 200] [--only-tlearn]

Trains a linear probe once (into data/serve_bench, git-ignored; kept for later runs), then, one
server at a time on 127.0.0.1: `tlearn serve RUN` (onnxruntime, dynamic batching) and the tutorial
server (FastAPI, `async def predict`, one eager PyTorch forward per request, the same model and
preprocessing). For each number of concurrent clients, `--requests` requests (one validation JPEG
each, multipart, cycling through the files) after a short warm-up; each client sends its next
request when its last one is answered. Prints one JSON line per server and client count: requests/s,
p50/p99 latency, errors, and the server's RSS before and after; then a summary line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT

WARM_UP_REQUESTS = 8


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        found = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if found:
            return process, f"http://127.0.0.1:{found.group(1)}"
    raise SystemExit(f"the server did not start: {' '.join(command)}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def drive(url: str, images: list[tuple[str, bytes]], clients: int, requests: int) -> dict:
    """`requests` requests from `clients` closed-loop clients: throughput, latency percentiles, errors."""
    import httpx

    latencies, errors, next_index = [], 0, 0

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal errors, next_index
        while next_index < requests:
            name, data = images[next_index % len(images)]
            next_index += 1
            start_time = time.perf_counter()
            try:
                response = await session.post(f"{url}/predict", files={"files": (name, data, "image/jpeg")})
                errors += response.status_code != 200
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - start_time)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1)}


def measure(name: str, command: list[str], images, levels: list[int], requests: int) -> dict[int, dict]:
    process, url = start(command)
    results = {}
    try:
        asyncio.run(drive(url, images, 1, WARM_UP_REQUESTS))
        for clients in levels:
            before = rss_mb(process.pid)
            result = asyncio.run(drive(url, images, clients, requests))
            results[clients] = {"server": name, "clients": clients, **result, "rss_mb_before": before,
                                "rss_mb_after": rss_mb(process.pid)}
            print(json.dumps(results[clients]), flush=True)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return results


def trained_run(data: str, model: str, image_size: int) -> Path:
    """A linear probe of `model` on `data`, trained once and kept."""
    import shutil

    import tlearn

    out = ROOT / "data" / "serve_bench"
    run = out / f"{model}-{image_size}"
    if not (run / "summary.json").is_file():
        shutil.rmtree(run, ignore_errors=True)  # an interrupted earlier attempt
        tlearn.train(tlearn.RunConfig(
            data=tlearn.DataConfig(source=data, image_size=image_size), model=tlearn.ModelConfig(name=model),
            train=tlearn.TrainConfig(strategy="linear-probe", epochs=1, report=False, cache_dir=str(out / "cache"))),
            run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=200, help="per client count (the target: 2000)")
    parser.add_argument("--only-tlearn", action="store_true", help="skip the tutorial server (an RSS check)")
    args = parser.parse_args()
    run = trained_run(args.data, args.model, args.image_size)
    images = [(path.name, path.read_bytes()) for path in sorted(Path(args.data, "val").rglob("*.jpg"))]
    levels = [int(value) for value in args.clients.split(",")]
    from tlearn.serve.server import bind

    with bind("127.0.0.1", 0) as probe:  # a free port for the tutorial server (it binds after this closes)
        port = probe.getsockname()[1]
    servers = {"tlearn serve": [sys.executable, "-m", "tlearn", "serve", str(run), "--port", "0"],
               "tutorial": [sys.executable, str(Path(__file__).with_name("_tutorial_server.py")), str(run), str(port)]}
    if args.only_tlearn:
        servers.pop("tutorial")
    results = {name: measure(name, command, images, levels, args.requests) for name, command in servers.items()}
    if args.only_tlearn:
        return
    top = max(levels)
    ours, theirs = results["tlearn serve"][top], results["tutorial"][top]
    print(json.dumps({"model": args.model, "image_size": args.image_size, "requests": args.requests,
                      "clients": top, "throughput_ratio": round(ours["requests_per_s"] / theirs["requests_per_s"], 2),
                      "p99_ms": {"tlearn serve": ours["p99_ms"], "tutorial": theirs["p99_ms"]},
                      "errors": {"tlearn serve": ours["errors"], "tutorial": theirs["errors"]},
                      "rss_mb": {"tlearn serve": [results["tlearn serve"][levels[0]]["rss_mb_before"],
                                                  ours["rss_mb_after"]]}}))


if __name__ == "__main__":
    main()
