"""What Grad-CAM adds to the report's wall time: the report of one run written with and without it.

    python benchmarks/report_grad_cam.py [--data ../shared/data/cifar10-mini] [--model efficientnet_lite0]
                                         [--rounds 3]

Trains a linear probe once (`--no-report`, into data/report_grad_cam, git-ignored), computes the
validation probabilities once, then writes the report `--rounds` times each way, alternating:
as `tlearn train` does (probabilities given; the model loaded for Grad-CAM, the shown images
run forward and backward) and with the explainer removed (the page as before Grad-CAM).
Prints one JSON line per report (wall and CPU seconds of this process) and a JSON summary of the medians.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-mini"))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import tlearn
    import tlearn.reports.run_report as run_report
    from tlearn.api import eval_samples
    from tlearn.infer.engine import classify
    from tlearn.run_folder import checkpoint
    from tlearn.runtime import setup_runtime

    out = ROOT / "data" / "report_grad_cam"
    run = out / "run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time; the feature cache is kept
    tlearn.train(tlearn.RunConfig(
        data=tlearn.DataConfig(source=args.data), model=tlearn.ModelConfig(name=args.model),
        train=tlearn.TrainConfig(strategy="linear-probe", epochs=1, report=False, cache_dir=str(out / "cache"))), run)
    samples = eval_samples(run, args.data, "val")
    runtime = setup_runtime("cpu")
    logits, _ = classify(checkpoint.load_model(run), samples, runtime, cache_dir=out / "cache")
    probs = logits.softmax(dim=1)
    explainer = run_report._explainer
    # the last report written is the one with Grad-CAM (data/report_grad_cam/run/report.html)
    times: dict[str, list[float]] = {"without": [], "with_grad_cam": []}
    cpu: dict[str, list[float]] = {"without": [], "with_grad_cam": []}
    for round_index in range(args.rounds):
        for variant in times:
            run_report._explainer = explainer if variant == "with_grad_cam" else (lambda *a: None)
            start, start_cpu = time.perf_counter(), time.process_time()
            run_report.report_run(run, samples, runtime, probs=probs)
            times[variant].append(time.perf_counter() - start)
            cpu[variant].append(time.process_time() - start_cpu)  # all threads: less sensitive to a busy machine
            print(json.dumps({"round": round_index, "variant": variant, "seconds": round(times[variant][-1], 2),
                              "cpu_seconds": round(cpu[variant][-1], 2)}), flush=True)
    medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
    cpu_medians = {k: round(statistics.median(v), 2) for k, v in cpu.items()}
    print(json.dumps({"model": args.model, "data": args.data, "val_images": len(samples), "rounds": args.rounds,
                      "median_seconds": medians, "median_cpu_seconds": cpu_medians,
                      "grad_cam_adds_seconds": round(medians["with_grad_cam"] - medians["without"], 2)}))


if __name__ == "__main__":
    main()
