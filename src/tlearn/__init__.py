"""tlearn: transfer learning for PyTorch image classifiers.

    model = tlearn.create_model("resnet50", num_classes=10)   # pretrained, new 10-class head
    tlearn.freeze(model)                                       # everything but the head
    summary = tlearn.fit(model, "path/to/images", out="runs/a", strategy="two-stage")
    trained = tlearn.load("runs/a")                            # model + preprocessing + classes
"""
__version__ = "0.1.0"

from .api import TrainedModel, evaluate, fit, load, train  # noqa: E402
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .errors import UserError  # noqa: E402
from .models import Classifier, create_model, list_models  # noqa: E402
from .strategy import freeze, unfreeze  # noqa: E402

__all__ = ["Classifier", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "TrainedModel", "UserError",
           "create_model", "evaluate", "fit", "freeze", "list_models", "load", "train", "unfreeze"]
