"""int8 against fp32 onnxruntime graphs of a run, batch 1 and 32, timed interleaved; one JSON line.

    PYTHONPATH=src python benchmarks/int8_latency.py                  # Lite0 probe of benchmarks/serve.py

Trains (once, into data/serve_bench, git-ignored) the linear probe benchmarks/serve.py uses, exports
its fp32 graph as `tlearn export --quantize int8` does, and quantizes it twice with the same
calibration: `int8_old`, as before the padding was folded, and `int8_new`, with the static padding
folded into the convolutions (infer/_pad_folding.py), which the export now uses; `fp32_folded` is
the fp32 graph after the same pass. Each round times every graph once (median of `--runs` batches
at batch 1, `--runs-32` at 32); the speed-ups are the medians over rounds of the ratios within a
round, so the load other processes put on the machine between rounds cancels out. Also printed:
top-1 of each graph and its agreement with fp32 on the run's held-out validation images, `uptime`'s
load average before and after, and where the int8 graphs spend their batch-1 time (onnxruntime's
profiler, share of kernel time by operator), and batch 1 through the engine `predict` and `serve`
use (`batch_1_engine`: uint8 images, normalised before the graph). `batch_1_streams`: batch-1
images per second with every core busy, one single-threaded session per core each running its own
stream of batch-1 images (a server answering one image per request from several clients); the
ratio is int8's rate over fp32's, within rounds as above.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import trained_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/cifar10-mini")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=15, help="timed batches of 1 per graph per round")
    parser.add_argument("--runs-32", type=int, default=3, help="timed batches of 32 per graph per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()
    run = trained_run(args.data, args.model, args.image_size)
    with tempfile.TemporaryDirectory(prefix="int8-latency-") as folder:
        graphs, validation = _graphs(run, Path(folder))
        accuracy = _accuracy(graphs, validation, args.threads)
        timing = _timing(graphs, args)
        timing["batch_1_engine"] = _engine_timing(graphs, validation[0].info.preprocessing, args)
        timing["batch_1_streams"] = _stream_rates({name: graphs[name] for name in ("fp32", "int8_new")}, args)
        profile = {name: _profile(graphs[name], args.threads) for name in ("int8_old", "int8_new")}
    print(json.dumps({"run": str(run), "threads": args.threads, "rounds": args.rounds,
                      "load_before": [round(value, 2) for value in load_before],
                      "load_after": [round(value, 2) for value in os.getloadavg()],
                      "accuracy": accuracy, **timing, "profile_batch_1": profile}))


def _graphs(run: Path, folder: Path):
    """The fp32 graph the export quantizes, the same after the padding pass, and both int8 graphs."""
    import torch

    from tlearn.data import resolve_split
    from tlearn.infer import quantize
    from tlearn.infer._pad_folding import fold_pads
    from tlearn.infer.graph import export_graph
    from tlearn.run_folder import load_model, read_config

    model = load_model(run).float().to(memory_format=torch.contiguous_format).eval()
    config = read_config(run)
    train = resolve_split(config.data, "train", config.train.seed).samples
    validation = resolve_split(config.data, "val", config.train.seed).samples
    calibration = quantize.calibration_inputs(model, train, quantize.CALIBRATION_IMAGES)
    graphs = {name: folder / f"{name}.onnx" for name in ("fp32", "fp32_folded", "int8_old", "int8_new")}
    export_graph(model, calibration[[0, -1, 0]], graphs["fp32"])
    fold_pads(graphs["fp32"], graphs["fp32_folded"])
    quantize._quantize(graphs["fp32"], graphs["int8_old"], calibration, fold_padding=False)
    quantize._quantize(graphs["fp32"], graphs["int8_new"], calibration, fold_padding=True)
    return graphs, (model, validation)


def _session(path: Path, threads: int, batch: int | None, profile: str | None = None):
    """As the engines make them (infer/engines.py): all optimisations, no spinning, a fixed batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if batch:
        options.add_free_dimension_override_by_name("batch", batch)
    if profile:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _accuracy(graphs: dict, validation, threads: int) -> dict:
    """Top-1 of each graph on the validation images, and its agreement with fp32, in percent."""
    import numpy as np
    import torch

    from tlearn.data import eval_transform, make_loader

    model, samples = validation
    loader = make_loader(samples, eval_transform(model.info.preprocessing), batch_size=32, shuffle=False,
                         workers=None, device=torch.device("cpu"))
    batches = [(images.numpy(), targets.numpy()) for images, targets in loader]
    predictions = {}
    for name, path in graphs.items():
        session = _session(path, threads, None)  # the last batch is smaller
        predictions[name] = np.concatenate([session.run(None, {"images": images})[0].argmax(1)
                                            for images, _ in batches])
    targets = np.concatenate([targets for _, targets in batches])
    return {name: {"top1": round(100 * float((found == targets).mean()), 2),
                   "agreement_with_fp32": round(100 * float((found == predictions["fp32"]).mean()), 2)}
            for name, found in predictions.items()} | {"images": int(len(targets))}


def _timing(graphs: dict, args) -> dict:
    """Median ms per batch of each graph, and the medians over rounds of within-round speed-ups."""
    import numpy as np

    result = {}
    for batch, runs in ((1, args.runs), (32, args.runs_32)):
        images = np.random.default_rng(0).standard_normal((batch, 3, args.image_size, args.image_size),
                                                          dtype=np.float32)
        sessions = {name: _session(path, args.threads, batch) for name, path in graphs.items()}
        rounds = {name: [] for name in graphs}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                rounds[name].append(_median_ms(session, images, runs))
        result[f"batch_{batch}"] = {
            "ms": {name: round(statistics.median(times), 2) for name, times in rounds.items()},
            "speedup_int8_old_over_fp32": _speedup(rounds, "fp32", "int8_old"),
            "speedup_int8_new_over_fp32": _speedup(rounds, "fp32", "int8_new"),
            "speedup_int8_new_over_int8_old": _speedup(rounds, "int8_old", "int8_new"),
            "speedup_fp32_folded_over_fp32": _speedup(rounds, "fp32", "fp32_folded")}
    return result


def _engine_timing(graphs: dict, prep, args) -> dict:
    """Batch 1 as `predict` and `serve` run the graphs (infer/engines.py's GraphEngine: uint8 images in,
    normalised in numpy): median ms and within-round speed-ups, interleaved as in `_timing`."""
    import torch

    from tlearn.infer.engines import GraphEngine

    names = ("fp32", "int8_old", "int8_new")
    engines = {name: GraphEngine(graphs[name], prep, threads=args.threads) for name in names}
    images = torch.randint(0, 256, (1, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    rounds = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            engine.logits(images)  # warm
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                engine.logits(images)
                times.append(1000 * (time.perf_counter() - start))
            rounds[name].append(statistics.median(times))
    return {"ms": {name: round(statistics.median(times), 2) for name, times in rounds.items()},
            "speedup_int8_old_over_fp32": _speedup(rounds, "fp32", "int8_old"),
            "speedup_int8_new_over_fp32": _speedup(rounds, "fp32", "int8_new")}


def _stream_rates(graphs: dict, args) -> dict:
    """Batch-1 images/s with one single-threaded session per core, all running at once (onnxruntime
    releases the GIL in `run`), and int8's rate over fp32's within each round."""
    import threading

    import numpy as np

    streams = os.cpu_count() or 1
    images = np.random.default_rng(0).standard_normal((1, 3, args.image_size, args.image_size), dtype=np.float32)
    sessions = {name: [_session(path, 1, 1) for _ in range(streams)] for name, path in graphs.items()}

    def rate(group: list) -> float:
        for session in group:
            session.run(None, {"images": images})  # warm
        start_line = threading.Barrier(len(group) + 1)

        def stream(session) -> None:
            start_line.wait()
            for _ in range(4 * args.runs):
                session.run(None, {"images": images})

        threads = [threading.Thread(target=stream, args=(session,)) for session in group]
        for thread in threads:
            thread.start()
        start_line.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        return len(group) * 4 * args.runs / (time.perf_counter() - start)

    rounds = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, group in sessions.items():
            rounds[name].append(rate(group))
    rates = {name: round(statistics.median(values), 1) for name, values in rounds.items()}
    return {"streams": streams, "images_per_s": rates,
            "speedup_int8_new_over_fp32": _speedup(rounds, "int8_new", "fp32")}


def _speedup(rounds: dict, slow: str, fast: str) -> float:
    """How many times faster `fast` ran than `slow`: the median over rounds of the ratio within each."""
    return round(statistics.median(a / b for a, b in zip(rounds[slow], rounds[fast])), 3)


def _median_ms(session, images, runs: int) -> float:
    session.run(None, {"images": images})  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"images": images})
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def _profile(path: Path, threads: int, runs: int = 20) -> dict:
    """Percent of batch-1 kernel time by operator, and the number of such nodes."""
    import numpy as np

    session = _session(path, threads, 1, profile=str(path.with_suffix("")))
    images = np.random.default_rng(0).standard_normal((1, *session.get_inputs()[0].shape[1:]), dtype=np.float32)
    for _ in range(runs + 1):
        session.run(None, {"images": images})
    durations, nodes = {}, {}
    with open(session.end_profiling()) as handle:
        for event in json.load(handle):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                operator = event["args"]["op_name"]
                durations[operator] = durations.get(operator, 0) + event["dur"]
                nodes.setdefault(operator, set()).add(event["name"])
    total = sum(durations.values())
    return {operator: [round(100 * duration / total, 1), len(nodes[operator])]
            for operator, duration in sorted(durations.items(), key=lambda item: -item[1])}


if __name__ == "__main__":
    main()
