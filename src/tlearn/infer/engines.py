"""What turns a batch of decoded images into logits for `predict` and `serve`: onnxruntime over the
run's cached graph (graph.py), onnxruntime over an exported file (the int8 graph of `export
--quantize int8`, or any model.onnx tlearn wrote), or PyTorch eager.

Every engine takes uint8 NCHW batches, as the loader decodes them (eval_transform_uint8), and
returns float32 logits; TrainedModel.answer turns those into labels, calibrated probabilities,
"unknown" and multi-label thresholds, the same code whatever the engine.

onnxruntime sessions: the graph's batch dimension is symbolic; each batch size runs in a session of
its own with the dimension fixed (onnxruntime's free-dimension override), so the optimiser sees
every shape. Measured on Lite0 at 224 px on 2 busy cores: 21-25 ms per image at batch 32 with the
size fixed, 36-47 ms with it symbolic; at batch 1 about 16-20 ms either way. Sessions exist for
powers of two, made on first use (0.1 s each); a batch of n runs as its binary decomposition
(13 = 8 + 4 + 1), so nothing is padded and no shape is ever new to onnxruntime.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..data import Preprocessing, normalize_batch
from ..errors import UserError
from ..files import read_json
from ..models import Classifier
from .engine import ENGINE_MIN_IMAGES
from .graph import GraphParityError, engine_graph

logger = logging.getLogger(__name__)

ENGINES = ("auto", "onnx", "int8", "torch")  # or the path of an .onnx file
INT8_FILE = "model.int8.onnx"  # in RUN/export/, written by `tlearn export --quantize int8`


class Engine(Protocol):
    name: str

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 logits (N, classes) on the CPU."""


class TorchEngine:
    """PyTorch eager, in the model's device."""

    name = "torch"

    def __init__(self, model: Classifier):
        self.model = model.eval()
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        inputs = normalize_batch(images.to(self.device), self.model.info.preprocessing)
        return self.model(inputs).float().cpu()


class GraphEngine:
    """onnxruntime over a classifier graph whose input is uint8 images (the run's engine graph) or
    normalised float32 ones (an exported file); sessions per power-of-two batch size."""

    def __init__(self, path: str | Path, prep: Preprocessing, name: str = "onnxruntime", threads: int | None = None):
        import onnxruntime as ort

        self.path, self.prep, self.name = str(path), prep, name
        self.threads = threads or torch.get_num_threads()
        probe = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        graph_input = probe.get_inputs()[0]
        self.float_input = graph_input.type != "tensor(uint8)"
        batch = graph_input.shape[0]
        self.batch_name = batch if isinstance(batch, str) else None  # symbolic: one session per size
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.sessions: dict[int, object] = {}
        self.lock = threading.Lock()

    def session(self, size: int):
        """The session for batches of `size` (made on first use; thread-safe)."""
        with self.lock:
            if size not in self.sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self.threads
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # idle onnxruntime threads must not spin: the decoding threads need those cores
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                if self.batch_name:
                    options.add_free_dimension_override_by_name(self.batch_name, size)
                self.sessions[size] = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
            return self.sessions[size]

    def chunk_sizes(self, count: int) -> list[int]:
        """The batch sizes `count` images run as: binary decomposition, or the graph's fixed batch."""
        if self.fixed_batch:
            return [self.fixed_batch] * -(-count // self.fixed_batch)
        return [1 << bit for bit in reversed(range(count.bit_length())) if count >> bit & 1]

    def warm_up(self, largest: int) -> None:
        """Make and run every session up to `largest` once: the first requests then wait for nothing."""
        size = 1
        while size <= largest:
            self.logits(torch.zeros(size, 3, self.prep.crop_size, self.prep.crop_size, dtype=torch.uint8))
            size *= 2

    def _normalized(self, images: torch.Tensor) -> np.ndarray:
        """normalize_batch's arithmetic in numpy, one thread: a torch operation's OpenMP threads keep
        spinning after it and take the cores onnxruntime's threads need next (Lite0 int8, batch 1,
        2 threads: 22 ms a batch after torch's normalisation, 6 ms after this one)."""
        std = np.asarray(self.prep.std, dtype=np.float32).reshape(1, 3, 1, 1)
        scale = np.float32(1.0) / (np.float32(255.0) * std)
        shift = -np.asarray(self.prep.mean, dtype=np.float32).reshape(1, 3, 1, 1) / std
        return images.numpy().astype(np.float32) * scale + shift

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self._normalized(images) if self.float_input else images.contiguous().numpy()
        outputs, start = [], 0
        for size in self.chunk_sizes(len(inputs)):
            chunk = inputs[start:start + size]
            count = len(chunk)
            if count < size:  # a fixed-batch file: pad the last chunk, drop the padding
                chunk = np.concatenate([chunk, np.zeros((size - count, *chunk.shape[1:]), dtype=chunk.dtype)])
            outputs.append(torch.from_numpy(self.session(size).run(None, {"images": chunk})[0][:count]))
            start += size
        return torch.cat(outputs).float() if outputs else torch.zeros(0)


def open_engine(model: Classifier, run_dir: str | Path | None, engine: str = "auto", count: int | None = None
                ) -> Engine:
    """The engine `--engine` names: auto (onnxruntime for `count` >= ENGINE_MIN_IMAGES images on the
    CPU, else PyTorch), onnx (the run's cached graph), int8 (RUN/export/model.int8.onnx), torch, or
    the path of an .onnx file that `tlearn export` wrote. A graph that fails its parity check falls
    back to PyTorch with a warning."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if engine == "torch" or (engine == "auto" and (not on_cpu or run_dir is None or
                                                   (count is not None and count < ENGINE_MIN_IMAGES))):
        return TorchEngine(model)
    if engine in ("auto", "onnx"):
        if run_dir is None:
            raise UserError("--engine onnx needs the model's run folder")
        try:
            return GraphEngine(engine_graph(run_dir, model), model.info.preprocessing)
        except (GraphParityError, RuntimeError, ValueError) as error:  # an operator the exporter lacks...
            logger.warning(f"the onnxruntime engine is unavailable ({str(error)[:120]}); predicting with PyTorch")
            return TorchEngine(model)
    path = Path(run_dir or ".") / "export" / INT8_FILE if engine == "int8" else Path(engine)
    return GraphEngine(checked_graph_file(path, model, engine), model.info.preprocessing,
                       name="onnxruntime int8" if engine == "int8" or ".int8." in path.name else "onnxruntime")


def checked_graph_file(path: Path, model: Classifier, engine: str) -> Path:
    """An exported graph for this model: present, with a sidecar whose classes and input size match."""
    if not path.is_file():
        if engine == "int8":
            raise UserError(f"no int8 graph at {path}: write it with tlearn export RUN --format onnx --quantize int8")
        raise UserError(f"--engine must be one of {', '.join(ENGINES)} or an .onnx file; {engine} is neither")
    try:
        sidecar = read_json(Path(f"{path}.json")) if Path(f"{path}.json").is_file() else None
    except (OSError, ValueError):
        sidecar = None
    if not isinstance(sidecar, dict):
        raise UserError(f"{path} has no readable sidecar {path.name}.json: use a graph that tlearn export wrote")
    prep = model.info.preprocessing
    if sidecar.get("classes") != list(model.info.class_names) or sidecar.get("crop_size") != prep.crop_size:
        raise UserError(f"{path} was exported from another model (its classes or input size differ from the run's)")
    return path
