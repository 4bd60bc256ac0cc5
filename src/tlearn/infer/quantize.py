"""`tlearn export RUN --format onnx --quantize int8`: static int8 quantization behind an accuracy gate.

onnxruntime's quantizer (`quantize_static`, QDQ format, per-channel int8 weights, uint8 activations
with min-max ranges, averaged over batches) calibrates the activations' ranges on a seeded sample of
the run's training images. Before that, the fp32 graph's same-padding is made static and folded into
its convolutions (_pad_folding.py), so no fp32 `Pad` stays between a Dequantize and a Quantize. Then
the gate: the fp32 and int8 graphs both classify the run's validation split; top-1 (multi-label:
mAP) of each, their agreement and batch-1 and batch-32 latency on this CPU are printed and stored in
the sidecar. When the int8 graph loses more than `max_drop` points, the export is refused
(UserError, exit 2, the figures in the message) and no int8 file is left. Only the final write
touches the run folder, under its lock.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import eval_transform, eval_transform_uint8, make_loader, resolve_split
from ..errors import UserError, first_line
from ..files import atomic_write
from ..models import Classifier
from ..run_folder import load_model, read_config, run_folder_lock
from ..task import Task
from ._pad_folding import fold_pads
from .engines import INT8_FILE, GraphEngine
from .export import sidecar
from .graph import export_graph

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256
MAX_DROP = 1.0  # points of top-1 (multi-label: mAP)
CALIBRATION_BATCH = 16
LATENCY_RUNS = {1: 40, 32: 4}  # batch size -> timed runs (after one untimed)


class QuantizationRefused(UserError):
    """The int8 graph lost more accuracy than --max-drop allows."""


@dataclass
class QuantizedExport:
    path: Path
    figures: dict


def quantize_run(run_dir: str | Path, *, calibration_images: int = CALIBRATION_IMAGES, max_drop: float = MAX_DROP,
                 output: str | Path | None = None) -> QuantizedExport:
    """Write RUN/export/model.int8.onnx (or `output`) and its sidecar, or refuse with the figures."""
    run_dir = Path(run_dir)
    output = Path(output) if output else run_dir / "export" / INT8_FILE
    model = load_model(run_dir).float().to(memory_format=torch.contiguous_format).eval()
    config = read_config(run_dir)
    try:
        train = resolve_split(config.data, "train", config.train.seed).samples
        val = resolve_split(config.data, "val", config.train.seed).samples
    except Exception as error:  # the data moved, or is offline
        raise UserError(f"int8 export calibrates on the run's training images and checks on its validation "
                        f"images; they are unavailable ({first_line(error, 100)})") from None
    with tempfile.TemporaryDirectory(prefix="tlearn-int8-") as folder:
        fp32, int8 = Path(folder) / "model.fp32.onnx", Path(folder) / INT8_FILE
        calibration = calibration_inputs(model, train, calibration_images)
        export_graph(model, calibration[[0, -1, 0]], fp32)  # three inputs, whatever the sample's size
        _quantize(fp32, int8, calibration)
        figures = gate_figures(model, fp32, int8, val)
        figures.update(calibration_images=len(calibration), max_drop=max_drop)
        if figures["drop_points"] > max_drop:
            raise QuantizationRefused(f"int8 loses {figures['drop_points']:.2f} points of {figures['metric']} "
                                      f"(> --max-drop {max_drop:g}): {describe_gate(figures)}; no int8 file written")
        _write(run_dir, int8, output, model, figures)
    return QuantizedExport(output, figures)


def calibration_inputs(model: Classifier, samples, count: int) -> torch.Tensor:
    """`count` training images (a seeded sample), preprocessed as the model sees them."""
    transform = eval_transform(model.info.preprocessing)
    picked = sorted(random.Random(0).sample(range(len(samples)), min(count, len(samples))))
    return torch.stack([transform(samples.load(index)) for index in picked])


class _Reader:
    """onnxruntime's CalibrationDataReader: the calibration images, a batch at a time."""

    def __init__(self, inputs: torch.Tensor):
        self.batches = iter([inputs[start:start + CALIBRATION_BATCH].numpy()
                             for start in range(0, len(inputs), CALIBRATION_BATCH)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def _quantize(fp32: Path, int8: Path, calibration: torch.Tensor, fold_padding: bool = True) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folded, prepared = fp32.with_name("model.folded.onnx"), fp32.with_name("model.prepared.onnx")
    if fold_padding:
        _static_padding(fp32, folded, calibration[:2])
    else:  # as before the folding (benchmarks/int8_latency.py compares the two)
        shutil.copyfile(fp32, folded)
    try:  # onnxruntime's advice: fold and infer shapes first, so more nodes can be quantized
        quant_pre_process(str(folded), str(prepared), skip_symbolic_shape=True)
    except Exception as error:
        logger.debug(f"quantization pre-processing skipped ({first_line(error)})")
        shutil.copyfile(folded, prepared)
    quantize_static(str(prepared), str(int8), _Reader(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    # each range is the mean of the batches' min and max, not the extreme of all: one outlier
                    # image no longer stretches a range (on Lite0 / CIFAR-10, 67.0 against 66.0 top-1 with fp32
                    # at 67.5, 200 validation images; both 80 % agreement)
                    extra_options={"CalibMovingAverage": True})


def _static_padding(fp32: Path, folded: Path, images: torch.Tensor) -> None:
    """`fp32` with its same-padding made static and folded into the convolutions (no fp32 `Pad`
    between a Dequantize and a Quantize in the int8 graph; figures in docs/serving.md#int8), kept only
    when it computes what `fp32` does; else `fp32` as it is."""
    import onnxruntime as ort

    try:
        count = fold_pads(fp32, folded)
        outputs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"images": images.numpy()})[0] for path in (fp32, folded)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
        logger.debug(f"{count} Pad nodes folded into their convolutions before quantization")
    except Exception as error:  # an operator the pass does not expect, or a difference: quantize as exported
        logger.info(f"padding not folded before quantization ({first_line(error)})")
        shutil.copyfile(fp32, folded)


def gate_figures(model: Classifier, fp32: Path, int8: Path, samples) -> dict:
    """Top-1 (multi-label: mAP) of both graphs on `samples`, their agreement, and their latency."""
    prep, task = model.info.preprocessing, Task.of(model.info)
    engines = {"fp32": GraphEngine(fp32, prep), "int8": GraphEngine(int8, prep)}
    meters = {name: task.eval_meter(model.info.num_classes, keep_probs=True) for name in engines}
    agree = 0
    loader = make_loader(samples, eval_transform_uint8(prep), batch_size=32, shuffle=False, workers=None,
                         device=torch.device("cpu"))
    for images, targets in loader:
        logits = {name: engine.logits(images) for name, engine in engines.items()}
        for name, meter in meters.items():
            meter.update(logits[name], targets)
        if task.multi_label:
            agree += int(((logits["fp32"] > 0) == (logits["int8"] > 0)).all(dim=1).sum())
        else:
            agree += int((logits["fp32"].argmax(1) == logits["int8"].argmax(1)).sum())
    scores = {name: 100 * task.selection_score(meter.result(), False) for name, meter in meters.items()}
    crop = prep.crop_size
    latency = {name: {f"batch_{size}_ms": _latency_ms(engine, size, crop) for size in LATENCY_RUNS}
               for name, engine in engines.items()}
    return {"metric": "mAP" if task.multi_label else "top-1", "images": len(samples),
            "fp32": round(scores["fp32"], 3), "int8": round(scores["int8"], 3),
            "drop_points": round(scores["fp32"] - scores["int8"], 3),
            "agreement": round(agree / max(1, len(samples)), 4), "latency": latency,
            "batch_1_speedup": round(latency["fp32"]["batch_1_ms"] / latency["int8"]["batch_1_ms"], 2),
            "threads": torch.get_num_threads()}


def _latency_ms(engine: GraphEngine, size: int, crop: int) -> float:
    """Median milliseconds of one batch of `size` (random pixels: the work does not depend on them)."""
    images = torch.randint(0, 256, (size, 3, crop, crop), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    engine.logits(images)  # the session is made and warmed
    times = []
    for _ in range(LATENCY_RUNS[size]):
        start = time.perf_counter()
        engine.logits(images)
        times.append(1000 * (time.perf_counter() - start))
    return round(float(np.median(times)), 2)


def describe_gate(figures: dict) -> str:
    latency = figures["latency"]
    return (f"{figures['metric']} fp32 {figures['fp32']:.2f} / int8 {figures['int8']:.2f} on {figures['images']} "
            f"validation images, agreement {100 * figures['agreement']:.1f}%, batch-1 "
            f"{latency['fp32']['batch_1_ms']:.1f} / {latency['int8']['batch_1_ms']:.1f} ms, batch-32 "
            f"{latency['fp32']['batch_32_ms']:.1f} / {latency['int8']['batch_32_ms']:.1f} ms (fp32 / int8)")


def _write(run_dir: Path, int8: Path, output: Path, model: Classifier, figures: dict) -> None:
    """The int8 file and its sidecar: how it was made and what the gate measured."""
    inside = output.resolve().is_relative_to(run_dir.resolve())
    with run_folder_lock(run_dir) if inside else contextlib.nullcontext():
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        shutil.copyfile(int8, partial)
        os.replace(partial, output)
        made = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": "int8 per channel",
                "activations": "uint8, min-max ranges (moving average over batches)",
                "calibration": f"{figures['calibration_images']} training images (seeded sample)",
                "onnxruntime": _ort_version()}
        atomic_write(Path(f"{output}.json"), json.dumps({**sidecar(model), "quantization": made, "gate": figures},
                                                        indent=2, ensure_ascii=False) + "\n")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__

