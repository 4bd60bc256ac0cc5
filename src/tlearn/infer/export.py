"""Export a run's model to ONNX or TorchScript, with a preprocessing sidecar and a parity check.

The sidecar `FILE.json` says what torchvision's `ImageClassification` transform means:
resize the shorter side to `resize_size`, center-crop `crop_size`, scale to [0, 1],
normalise with `mean`/`std`; a single-label run's probabilities are softmax(logits /
`temperature`), "unknown" below `min_confidence` when the run has one. Parity: logits of
the exported file vs PyTorch on real preprocessed images, max abs difference <= 1e-4 and the
same top-1 for every sample (a multi-label model: the same labels, sigmoid(logit) >= the
sidecar's `thresholds`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import eval_transform, resolve_split
from ..errors import UserError, first_line
from ..files import atomic_write
from ..metrics import sidecar_fields
from ..models import Classifier
from ..run_folder import load_model, read_config, run_folder_lock

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


@dataclass
class ParityReport:
    path: Path
    samples: int
    max_abs_diff: float
    top1_agree: int  # samples with the same top-1 (multi-label: the same labels above the thresholds)
    inputs: str  # what the check ran on
    agreement: str = "top-1"  # what top1_agree compares: "top-1" or "labels"

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= TOLERANCE and self.top1_agree == self.samples


def sidecar(model: Classifier) -> dict:
    if model.info.multi_label:  # the ONNX output stays logits: sigmoid, then each class's threshold
        return {**_single_label_sidecar(model), "task": "multi-label", "thresholds": list(model.info.thresholds),
                "output": "logits (sigmoid for probabilities; a class applies when its probability >= its threshold)"}
    return {**_single_label_sidecar(model), **sidecar_fields(model.info)}  # temperature, min_confidence


def _single_label_sidecar(model: Classifier) -> dict:
    prep = model.info.preprocessing
    return {"classes": list(model.info.class_names), "resize_size": prep.resize_size, "crop_size": prep.crop_size,
            "whole_image": prep.whole_image,  # true: resize to crop_size x crop_size, no crop
            "interpolation": prep.interpolation, "mean": list(prep.mean), "std": list(prep.std),
            "input": "float32 NCHW RGB, batch dimension dynamic", "output": "logits (softmax for probabilities)",
            "model": model.info.name,
            # --balance logit-adjust: the logits already include -tau * log(prior) (in the head's bias)
            "balance": model.info.balance or {"mode": "none"}}


def export_run(run_dir: str | Path, fmt: str, output: str | Path | None = None, *,
               num_samples: int = 16) -> ParityReport:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    run_dir = Path(run_dir)
    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    output = Path(output) if output else run_dir / "export" / f"model{suffix}"
    inside = output.resolve().is_relative_to(run_dir.resolve())
    with run_folder_lock(run_dir) if inside else contextlib.nullcontext():  # no export while a run writes
        return _export(run_dir, fmt, output, num_samples)


def _export(run_dir: Path, fmt: str, output: Path, num_samples: int) -> ParityReport:
    model = load_model(run_dir).float().to(memory_format=torch.contiguous_format).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    inputs, description = parity_inputs(run_dir, model, num_samples)
    with torch.inference_mode():
        reference = model(inputs).float()
    try:
        logits = (_export_onnx if fmt == "onnx" else _export_torchscript)(model, inputs, output)
    except Exception as error:  # an operator the exporter does not support, a tracing failure...
        raise UserError(f"{fmt} export of {model.info.name} failed ({type(error).__name__}: "
                        f"{first_line(error, 160)})") from None
    atomic_write(Path(f"{output}.json"), json.dumps(sidecar(model), indent=2, ensure_ascii=False) + "\n")
    if model.info.multi_label:
        thresholds = torch.tensor(model.info.thresholds or [0.5] * model.info.num_classes)
        same = ((logits.sigmoid() >= thresholds) == (reference.sigmoid() >= thresholds)).all(dim=1)
        return ParityReport(output, len(inputs), float((logits - reference).abs().max()), int(same.sum()),
                            description, "labels")
    return ParityReport(output, len(inputs), float((logits - reference).abs().max()),
                        int((logits.argmax(1) == reference.argmax(1)).sum()), description)


def parity_inputs(run_dir: Path, model: Classifier, count: int) -> tuple[torch.Tensor, str]:
    """Preprocessed validation images of the run's own data; random pixels if it is gone."""
    transform = eval_transform(model.info.preprocessing)
    try:

        config = read_config(run_dir)
        samples = resolve_split(config.data, "val", config.train.seed).samples
        picked = list(range(min(count, len(samples))))
        return torch.stack([transform(samples.load(i)) for i in picked]), f"{len(picked)} validation images"
    except Exception as error:  # data moved or offline: still check, on images of noise
        logger.warning(f"run data unavailable ({str(error)[:80]}); parity runs on random images")
        from PIL import Image

        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 256, (model.info.preprocessing.crop_size,) * 2 + (3,),
                                               dtype=np.uint8)) for _ in range(count)]
        return torch.stack([transform(image) for image in images]), f"{count} random images"


def _export_onnx(model: Classifier, inputs: torch.Tensor, output: Path) -> torch.Tensor:
    import onnxruntime as ort

    tmp = output.with_name(f".{output.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (inputs[:1],), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    tmp.replace(output)
    model.eval()  # the exporter restores the module's mode; make sure it stays in eval
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": inputs.numpy()})[0]).float()


def _export_torchscript(model: Classifier, inputs: torch.Tensor, output: Path) -> torch.Tensor:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, inputs[:2], check_trace=False)
        tmp = output.with_name(f".{output.name}.tmp")
        torch.jit.save(traced, str(tmp))
        tmp.replace(output)
        loaded = torch.jit.load(str(output), map_location="cpu").eval()
        return loaded(inputs).float()
