"""The whole classifier as one ONNX graph: the engine of `predict` at scale, `serve`, and the fp32
side of the int8 export.

`export_graph` traces the classifier with every shape fixed (batch 1), then marks the batch
dimension symbolic in the file, and checks the result against PyTorch at batch 1 and batch 3.
A fixed trace is what onnxruntime's quantizer can handle (the dynamic trace of Lite0 fails QOperator
quantization: "Graph is not a DAG"); it still computes timm's TF-"same" padding from the input's
shape at run time (Shape/Gather/Pad nodes, which the symbolic batch keeps onnxruntime from folding),
and the int8 export folds that padding into the convolutions first (_pad_folding.py). A model whose
trace bakes the batch size into a reshape fails the batch-3 check; it is exported again with a
dynamic batch axis, and checked again.

`engine_graph` is the serving graph of a run: uint8 images in (normalised inside the graph, as
features/backends.py does), logits out; exported once per model and cached beside the run as
RUN/export/engine.onnx, with a sidecar holding the model's identity (a hash of model.safetensors
and model.json, and the torch version) and the parity check it passed. Writing it holds the run
folder's lock for the export's few seconds; a run folder that cannot be written, or that another
process holds, keeps the graph in the temporary folder instead. Reading needs no lock: the file
appears whole, by rename.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import Preprocessing, normalize_batch
from ..errors import RunFolderError
from ..files import atomic_write, read_json
from ..models import Classifier
from ..run_folder import run_folder_lock

logger = logging.getLogger(__name__)

ENGINE_FILE = "engine.onnx"  # in RUN/export/, with ENGINE_FILE.json beside it
GRAPH_FORMAT = 1  # bump when what the graph computes changes: older cached graphs are then exported again
PARITY_TOLERANCE = 1e-4  # max abs logit difference, onnxruntime vs PyTorch (export.py's TOLERANCE)
PARITY_BATCHES = (1, 3)  # the trace's batch, and another: a baked-in batch size fails the second


class GraphParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model does."""


@dataclass
class GraphCheck:
    max_abs_diff: float
    batches: tuple[int, ...]
    dynamic_trace: bool  # True: the fixed trace failed at another batch; this one keeps a dynamic axis


class UInt8Classifier(torch.nn.Module):
    """uint8 images -> normalised -> logits, as one module for the exporter."""

    def __init__(self, model: Classifier, prep: Preprocessing):
        super().__init__()
        self.model, self.prep = model, prep

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(normalize_batch(images, self.prep))


def export_graph(module: torch.nn.Module, example: torch.Tensor, path: Path) -> GraphCheck:
    """`module` (eval mode) as an ONNX file at `path` with a symbolic batch, checked against PyTorch
    on `example` (at least 3 inputs) at batch 1 and 3; raises GraphParityError when neither trace
    matches. Input "images", output "logits"."""
    module.eval()
    for dynamic in (False, True):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _trace(module, example[:1], tmp, dynamic)
            difference = _parity(module, example, tmp)
        except Exception as error:  # a failed trace, or a batch size baked into a reshape
            logger.debug(f"ONNX export ({'dynamic' if dynamic else 'fixed'} trace) failed: {error}")
            tmp.unlink(missing_ok=True)
            difference = float("inf")
        if difference <= PARITY_TOLERANCE:
            os.replace(tmp, path)
            return GraphCheck(difference, PARITY_BATCHES, dynamic)
        tmp.unlink(missing_ok=True)
    raise GraphParityError(f"the ONNX graph of the model differs from PyTorch by more than {PARITY_TOLERANCE:g}")


def _trace(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    import onnx

    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    module.eval()  # the exporter restores the module's mode; keep it in eval
    if not dynamic:
        graph = onnx.load(str(path))
        for value in (*graph.graph.input, *graph.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        onnx.save(graph, str(path))


def _parity(module: torch.nn.Module, example: torch.Tensor, path: Path) -> float:
    """The largest logit difference from PyTorch at each of PARITY_BATCHES (different top-1: inf)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in PARITY_BATCHES:
        inputs = example[:batch]
        with torch.inference_mode():
            reference = module(inputs).float().numpy()
        logits = session.run(None, {"images": inputs.numpy()})[0]
        if logits.shape != reference.shape or (logits.argmax(1) != reference.argmax(1)).any():
            return float("inf")
        worst = max(worst, float(np.abs(logits - reference).max()))
    return worst


def model_identity(run_dir: Path) -> str:
    """What the cached graph must match: the run's weights and model.json, torch, the graph format."""
    digest = hashlib.sha256(f"{GRAPH_FORMAT}|{torch.__version__}".encode())
    for name in ("model.safetensors", "model.json"):
        with open(run_dir / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def engine_graph(run_dir: str | Path, model: Classifier) -> Path:
    """The run's uint8-in, logits-out graph: the cached one when it matches the model, else exported
    now (beside the run, or in the temporary folder when the run folder cannot take it). Raises
    GraphParityError when the model's graph does not match PyTorch."""
    run_dir = Path(run_dir)
    identity = model_identity(run_dir)
    beside_run = run_dir / "export" / ENGINE_FILE
    elsewhere = Path(tempfile.gettempdir()) / "tlearn-onnx" / f"engine-{identity}.onnx"
    for path in (beside_run, elsewhere):
        if _cached(path, identity):
            return path
    try:
        with run_folder_lock(run_dir):  # a few seconds: the export and its check
            if not _cached(beside_run, identity):  # another process may have written it meanwhile
                _write_engine(model, beside_run, identity)
            return beside_run
    except (OSError, RunFolderError) as error:  # read-only, full, or in use by a training
        logger.info(f"cannot cache the engine graph in {run_dir} ({error}); using {elsewhere.parent}")
    _write_engine(model, elsewhere, identity)
    return elsewhere


def _cached(path: Path, identity: str) -> bool:
    try:
        return path.is_file() and read_json(Path(f"{path}.json")).get("identity") == identity
    except (OSError, ValueError, AttributeError):
        return False


def _write_engine(model: Classifier, path: Path, identity: str) -> None:
    prep = model.info.preprocessing
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (max(PARITY_BATCHES), 3, prep.crop_size, prep.crop_size), dtype=torch.uint8,
                            generator=generator)
    check = export_graph(UInt8Classifier(model.float().cpu().eval(), prep), example, path)
    sidecar = {"identity": identity, "input": "uint8 NCHW RGB after resize and crop, normalised inside; "
               "batch dimension symbolic", "output": "logits", "model": model.info.name,
               "parity": {"max_abs_diff": check.max_abs_diff, "batches": list(check.batches),
                          "tolerance": PARITY_TOLERANCE, "dynamic_trace": check.dynamic_trace}}
    atomic_write(Path(f"{path}.json"), json.dumps(sidecar, indent=2) + "\n")
    logger.info(f"engine graph exported to {path} (parity with PyTorch: max abs logit difference "
                f"{check.max_abs_diff:.1e})")
