"""The passes `tlearn eval` makes over its images: through the engine `--engine` names (engines.py,
as `tlearn predict` uses them), or, with `auto`, through engine.py's choice (onnxruntime backbone for
many images on the CPU, else PyTorch eager)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Samples, eval_transform_uint8, make_loader
from ..features import default_cache_dir
from ..runtime import Runtime
from ._tta import Views
from .engine import classify
from .engines import open_engine
from .trained import TrainedModel


@dataclass
class Passes:
    trained: TrainedModel
    run_dir: Path | None  # None: a loaded model, without the run folder's graphs
    runtime: Runtime
    batch_size: int
    workers: int | None
    engine: str = "auto"  # or torch, onnx, int8, the path of an exported .onnx file

    def __post_init__(self):
        self.trained.model.to(self.runtime.device)

    def classify(self, samples: Samples, views: Views | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(plain logits, the views' averaged logits or None, labels): one pass when plain evaluation's
        image is one of the views, else a plain pass too."""
        logits, targets = self.logits(samples, views)
        if views is None:
            return logits, None, targets
        index = views.plain_index(self.trained.preprocessing)
        plain = logits[:, index] if index is not None else self.logits(samples, None)[0]
        return plain.contiguous(), logits.mean(dim=1), targets

    def logits(self, samples: Samples, views: Views | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.engine == "auto" or (self.engine == "torch" and views is not None):
            return classify(self.trained.model, samples, self.runtime, batch_size=self.batch_size,
                            workers=self.workers, cache_dir=default_cache_dir(), views=views)
        return self._through_engine(samples)

    def _through_engine(self, samples: Samples) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the uint8 crops `tlearn predict` feeds the same engine, decoded by the loader."""
        engine = open_engine(self.trained.model, self.run_dir, self.engine)
        loader = make_loader(samples, eval_transform_uint8(self.trained.preprocessing), batch_size=self.batch_size,
                             shuffle=False, workers=self.workers, device=torch.device("cpu"))
        logits = [engine.logits(images) for images, _ in loader]
        labels = torch.tensor(samples.labels, dtype=torch.int64)
        return (torch.cat(logits) if logits else torch.zeros(0, len(self.trained.class_names))), labels
