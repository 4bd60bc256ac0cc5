"""Models: names, pretrained weights, head replacement."""
from .classifier import AuxOutput, Classifier, ModelInfo
from .factory import create_model
from .registry import list_models, resolve

__all__ = ["AuxOutput", "Classifier", "ModelInfo", "create_model", "list_models", "resolve"]
