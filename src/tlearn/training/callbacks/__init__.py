"""The training techniques, each a callback on the loop's events (events.py), each in one module:

    Mixing              mixing.py          --mixup / --cutmix: mixed images, soft targets
    Accumulation        accumulation.py    --accumulate N: one optimiser step per N micro-batches
    WeightAveraging     ema.py             --ema-decay: the EMA of the weights, validated and published
    GradualUnfreezing   unfreezing.py      --unfreeze gradual: one more block group each epoch
    EarlyStopping       early_stopping.py  --patience: a stage ends when --monitor stops improving
    TimeSplit           timing.py          data, compute and optimiser seconds in metrics.csv
    TensorBoard         tensorboard.py     --tensorboard: each epoch's row as scalars

The LR finder's callback is lr_finder.py's (it runs the loop with the batch techniques below);
the runner's own epoch end, the metrics row and the commit, is runner.EpochCommit.
"""
from __future__ import annotations

from ...config import RunConfig
from ...task import Task
from .._events import Callback
from .accumulation import Accumulation
from .early_stopping import EarlyStopping
from .ema import WeightAveraging
from .mixing import Mixing, make_mixer
from .tensorboard import TensorBoard
from .timing import TimeSplit
from .unfreezing import GradualUnfreezing

__all__ = ["Accumulation", "EarlyStopping", "GradualUnfreezing", "Mixing", "TensorBoard", "TimeSplit",
           "WeightAveraging", "batch_techniques", "mixes"]


def batch_techniques(config: RunConfig, task: Task, num_classes: int, cached: bool) -> list[Callback]:
    """What changes how a batch trains: mixing (images only: a head on cached features has nothing to
    mix) and accumulation. A stage's training and its LR sweep both run them."""
    techniques: list[Callback] = []
    mixer = None if cached else make_mixer(config, task, num_classes)
    if mixer is not None:
        techniques.append(Mixing(mixer))
    if config.train.accumulate > 1:
        techniques.append(Accumulation(config.train.accumulate))
    return techniques


def mixes(callbacks: list[Callback]) -> bool:
    """The batches are mixed: the soft targets carry --label-smoothing, the loss adds none."""
    return any(isinstance(callback, Mixing) for callback in callbacks)
