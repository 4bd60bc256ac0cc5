"""tlearn: transfer learning for PyTorch image classifiers.

    model = tlearn.create_model("resnet50", num_classes=10)   # pretrained, new 10-class head
    tlearn.freeze(model)                                       # everything but the head
    summary = tlearn.fit(model, "path/to/images", out="runs/a", strategy="two-stage")
    trained = tlearn.load("runs/a")                            # model + preprocessing + classes

Names are imported on first use, so `tlearn --help` and flag errors answer without
loading PyTorch.
"""
from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "TrainedModel": "api", "evaluate": "api", "fit": "api", "load": "api", "predict": "api", "train": "api",
    "DataConfig": "config", "ModelConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "UserError": "errors", "Classifier": "models", "create_model": "models", "list_models": "models",
    "freeze": "train.strategy", "unfreeze": "train.strategy", "configure_allocator": "allocator",
    "select_backbone": "select.selection",
    "distill": "api", "DistillConfig": "config", "push_run": "hub.push",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
