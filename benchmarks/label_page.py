"""How long the labelling page makes a person wait: answer latency, a round's plan, a refit.

A pool of CIFAR-10 training JPEGs from ../shared/data (stratified, seeded), the page's app driven
in-process (FastAPI's TestClient: the routes, the table's locked atomic rewrite, the round plan),
each answer the image's true class, given --think-seconds after the image is shown. Prints one
JSON line: the pool, the answers, each answer's latency (median, 95th percentile, largest: the
largest are the answers that complete a round), and a round's plan and a refit timed on their own.

    python benchmarks/label_page.py       # 2,000 images, 40 answers 2 s apart, Lite0 at 96 px
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, sample_cifar  # noqa: E402
from tlearn.label import Backbone, LabelSession, create_label_app  # noqa: E402

DATA = ROOT / "data" / "label-page"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool-images", type=int, default=2000)
    parser.add_argument("--answers", type=int, default=40)
    parser.add_argument("--refit-every", type=int, default=10)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--think-seconds", type=float, default=2.0,
                        help="a person's time per image before answering (the next round is planned meanwhile)")
    args = parser.parse_args()
    folder = DATA / f"pool-{args.pool_images}"
    if not (folder / "train").is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        sample_cifar(folder, args.pool_images, 0, seed=0)
    pool = folder / "train"  # train/<class>/*.jpg: the class is the folder, hidden from the page
    backbone = Backbone(model=args.model, image_size=args.image_size, cache_dir=str(DATA / "cache"))
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "labels.csv"
        started = time.perf_counter()
        session = LabelSession(pool, table, backbone, refit_every=args.refit_every)
        opened = time.perf_counter() - started
        client = TestClient(create_label_app(session))
        latencies = answer(client, args.answers, args.think_seconds)
        known = session.known()
        started = time.perf_counter()
        session.refit(known)
        refit = time.perf_counter() - started
        session.queues.clear()
        started = time.perf_counter()
        session.queue(known)
        plan = time.perf_counter() - started
    milliseconds = np.array(latencies) * 1000
    print(json.dumps({
        "pool": len(session.pool), "answers": args.answers, "refit_every": args.refit_every,
        "model": args.model, "image_size": args.image_size, "think_s": args.think_seconds, "open_s": round(opened, 1),
        "answer_ms_median": round(float(np.median(milliseconds)), 1),
        "answer_ms_p95": round(float(np.percentile(milliseconds, 95)), 1),
        "answer_ms_max": round(float(milliseconds.max()), 1),
        "plan_s": round(plan, 2), "refit_s": round(refit, 2), "estimate": session.probe.estimate,
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }))


def answer(client: TestClient, count: int, think: float) -> list[float]:
    """Answer `count` images with their true class, `think` seconds after each is shown; each
    answer's seconds (the POST and its new state)."""
    latencies = []
    state = client.get("/api/state").json()
    for _ in range(count):
        path = state["image"]["path"]
        label = path.split("/")[0]
        if label not in state["classes"]:
            client.post("/api/class", json={"name": label})
        time.sleep(think)
        started = time.perf_counter()
        response = client.post("/api/answer", json={"path": path, "label": label})
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
        state = response.json()
    return latencies


if __name__ == "__main__":
    main()
