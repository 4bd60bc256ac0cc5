"""Feature backends: the fastest backbone forward this machine allows, for feature extraction.

On CPU: onnxruntime runs the exported backbone several times faster than PyTorch eager
channels_last (measured: README, Performance). The graph is exported once per batch size with
every shape fixed, cached beside the features, and checked against PyTorch on the first batch;
any export or parity failure falls back to PyTorch with one log line. On CUDA: PyTorch with
autocast and channels_last. Every backend is a `FeatureBackend`: uint8 batch in, features out.

Why fixed shapes: a dynamic batch axis keeps the traced shape arithmetic in the graph (timm's
TF-"same" padding, for one, becomes Shape/Gather/Pad nodes), which stops onnxruntime from
folding the padding into the convolutions and from keeping its blocked NCHWc layout across
them. With every shape fixed the Lite0 graph optimises down to Conv + pooling only, and runs
about twice as fast. A short last batch is padded to the fixed size and the padding dropped.

Both backends take the decoded uint8 batch and normalise it themselves: inside the ONNX graph
(two element-wise ops on onnxruntime's threads instead of a serial pass in the main process)
and on the device for PyTorch (a quarter of the bytes to copy to a GPU).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Protocol

import torch

from ..data import Preprocessing, normalize_batch
from ..models import Classifier
from ..runtime import Runtime

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-3  # max abs difference of features, ONNX vs PyTorch, on the first batch
PARITY_IMAGES = 4


def backbone_fingerprint(model: Classifier) -> str:
    """Hash of the backbone's architecture and every tensor: never stale, whatever the weights."""
    digest = hashlib.sha256(f"{model.info.name}|{model.info.build_kwargs}".encode())
    for key, tensor in model.backbone.state_dict().items():
        digest.update(key.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().data if flat.numel() else b"")
    return digest.hexdigest()[:32]


class FeatureBackend(Protocol):
    """uint8 NCHW images (as the loader decodes them) -> float32 features on the CPU."""

    @property
    def name(self) -> str:
        """The backend that computes the features now (a failed parity check changes it)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class TorchBackend:
    name = "torch"

    def __init__(self, model: Classifier, prep: Preprocessing, runtime: Runtime):
        self.model, self.prep, self.runtime = model, prep, runtime

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW images (as the loader decodes them) -> float32 features on the CPU."""
        images = normalize_batch(self.runtime.to_device(images), self.prep)
        with self.runtime.autocast():
            return self.model.forward_features(images).float().cpu()


# Graphs whose features matched PyTorch in this process: the same file holds the same weights
# (its name is a hash of them), so the check need not run again.
_VERIFIED: set[str] = set()


@functools.lru_cache(maxsize=2)
def _session(path: str, threads: int):
    """One session per graph file and thread count, kept for the process: creating one (graph
    optimisation included) takes about 0.3 s, which train and val extraction then pay once."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads must not spin: the DataLoader workers need those cores to decode.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """onnxruntime session over the exported backbone; verifies itself on the first batch."""

    def __init__(self, path: Path, batch_size: int, fallback: TorchBackend):
        self.path = str(path)
        self.session = _session(self.path, torch.get_num_threads())
        self.batch_size, self.fallback = batch_size, fallback
        self.checked = self.path in _VERIFIED
        self.active = True

    @property
    def name(self) -> str:
        return "onnxruntime" if self.active else self.fallback.name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.fallback(images)
        features = torch.cat([self._run(chunk) for chunk in images.split(self.batch_size)])
        if not self.checked:  # a few images suffice, and keep the check cheap
            self.checked = True
            reference = self.fallback(images[:PARITY_IMAGES])
            difference = (features[:PARITY_IMAGES] - reference).abs().max().item()
            if not difference <= PARITY_TOLERANCE:
                logger.warning(f"onnxruntime features differ from PyTorch by {difference:.2e}; using PyTorch")
                self.active = False
                return self.fallback(images)
            _VERIFIED.add(self.path)
        return features

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """One fixed-size batch through the graph; a short batch is zero-padded, then trimmed."""
        count = len(images)
        if count < self.batch_size:
            images = torch.cat([images, images.new_zeros(self.batch_size - count, *images.shape[1:])])
        return torch.from_numpy(self.session.run(None, {"images": images.numpy()})[0][:count])


def make_backend(model: Classifier, prep: Preprocessing, runtime: Runtime, cache_dir: Path | None,
                 backend: str = "auto", batch_size: int = 64) -> FeatureBackend:
    """A backend for uint8 batches preprocessed with `prep`. `auto`: onnxruntime on CPU when it
    exports and matches, else PyTorch.

    `batch_size` is the graph's fixed batch: give the loader's, or the dataset size if smaller.
    """
    model.eval()
    torch_backend = TorchBackend(model, prep, runtime)
    if backend == "torch" or runtime.device.type != "cpu":
        return torch_backend
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return torch_backend
    try:
        path = _exported_backbone(model, prep, batch_size, cache_dir)
        return OnnxBackend(path, batch_size, torch_backend)
    except Exception as error:  # unsupported operator, odd output type...: PyTorch works anyway
        logger.info(f"ONNX export of {model.info.name} failed ({type(error).__name__}); extracting with PyTorch")
        return torch_backend


def _exported_backbone(model: Classifier, prep: Preprocessing, batch_size: int, cache_dir: Path | None) -> Path:
    import tempfile

    identity = f"{backbone_fingerprint(model)}|{batch_size}x{prep.crop_size}|{prep.mean}|{prep.std}|{torch.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:32]
    folders = [Path(tempfile.gettempdir()) / "tlearn-onnx"]
    if cache_dir is not None:
        folders.insert(0, Path(cache_dir) / "onnx")
    for folder in folders:
        path = folder / f"{key}.onnx"
        if path.is_file():
            return path
    if len(folders) > 1:
        try:
            return _export_to(model, prep, batch_size, folders[0], key)
        except OSError:  # a read-only or full cache folder: the temporary folder will do
            pass
    return _export_to(model, prep, batch_size, folders[-1], key)


def _export_to(model: Classifier, prep: Preprocessing, batch_size: int, folder: Path, key: str) -> Path:
    path = folder / f"{key}.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(batch_size, 3, prep.crop_size, prep.crop_size, dtype=torch.uint8)
    # The wrapper must be in eval mode: the exporter restores the wrapper's own mode
    # recursively afterwards, which would switch the model's BatchNorm back to training.
    backbone = _NormalizedBackbone(model, prep).eval()
    tmp = folder / f".{key}.{os.getpid()}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(backbone, (example,), str(tmp), input_names=["images"], output_names=["features"],
                          opset_version=17, dynamo=False)  # no dynamic axes: see the module docstring
    os.replace(tmp, path)
    return path


class _NormalizedBackbone(torch.nn.Module):
    """uint8 images -> normalised -> forward_features, as one module for the exporter."""

    def __init__(self, model: Classifier, prep: Preprocessing):
        super().__init__()
        self.model, self.prep = model, prep

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(normalize_batch(images, self.prep))
