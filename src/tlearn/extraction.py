"""The fastest backbone forward this machine allows, for feature extraction.

On CPU: onnxruntime runs the exported backbone 1.6-2.5x faster than PyTorch eager
channels_last (measured: README, Performance). The graph is exported once, cached beside the
features, and checked against PyTorch on the first batch; any export or parity failure
falls back to PyTorch with one log line. On CUDA: PyTorch with autocast and channels_last.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import torch

from .models.classifier import Classifier
from .runtime import Runtime

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


class TorchEngine:
    name = "torch"

    def __init__(self, model: Classifier, runtime: Runtime):
        self.model, self.runtime = model, runtime

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with self.runtime.autocast():
            return self.model.forward_features(self.runtime.to_device(images)).float().cpu()


class OnnxEngine:
    """onnxruntime session over the exported backbone; verifies itself on the first batch."""

    name = "onnxruntime"

    def __init__(self, path: Path, fallback: TorchEngine, log: Callable[[str], None]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads must not spin: the DataLoader workers need those cores to decode.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.fallback, self.log = fallback, log
        self.checked = False
        self.active = True

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.fallback(images)
        features = torch.from_numpy(self.session.run(None, {"images": images.float().numpy()})[0])
        if not self.checked:  # a few images suffice, and keep the check cheap
            self.checked = True
            reference = self.fallback(images[:PARITY_IMAGES])
            difference = (features[:PARITY_IMAGES] - reference).abs().max().item()
            if not difference <= PARITY_TOLERANCE:
                self.log(f"onnxruntime features differ from PyTorch by {difference:.2e}; using PyTorch")
                self.active = False
                return self.fallback(images)
        return features


def make_engine(model: Classifier, crop_size: int, runtime: Runtime, cache_dir: Path | None,
                engine: str = "auto", log: Callable[[str], None] = print) -> TorchEngine | OnnxEngine:
    """`auto`: onnxruntime on CPU when it exports and matches, else PyTorch."""
    model.eval()
    torch_engine = TorchEngine(model, runtime)
    if engine == "torch" or runtime.device.type != "cpu":
        return torch_engine
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return torch_engine
    try:
        path = _exported_backbone(model, crop_size, cache_dir)
        return OnnxEngine(path, torch_engine, log)
    except Exception as error:  # unsupported operator, odd output type...: PyTorch works anyway
        log(f"ONNX export of {model.info.name} failed ({type(error).__name__}); extracting with PyTorch")
        return torch_engine


def _exported_backbone(model: Classifier, crop_size: int, cache_dir: Path | None) -> Path:
    import tempfile

    key = hashlib.sha256(f"{backbone_fingerprint(model)}|{crop_size}|{torch.__version__}".encode()).hexdigest()[:32]
    folder = Path(cache_dir) / "onnx" if cache_dir is not None else Path(tempfile.gettempdir()) / "tlearn-onnx"
    path = folder / f"{key}.onnx"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, crop_size, crop_size)
    # The wrapper must be in eval mode: the exporter restores the wrapper's own mode
    # recursively afterwards, which would switch the model's BatchNorm back to training.
    backbone = _CpuBackbone(model).eval()
    tmp = folder / f".{key}.{os.getpid()}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(backbone, (example,), str(tmp), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=17, dynamo=False)
    os.replace(tmp, path)
    return path


class _CpuBackbone(torch.nn.Module):
    """forward_features as a module's forward, for the exporter."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)
