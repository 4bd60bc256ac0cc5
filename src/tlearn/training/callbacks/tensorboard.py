"""`--tensorboard`: every epoch's metrics row as TensorBoard scalars, in RUN/tensorboard, after the
epoch's commit (rank 0 only: the runner opens it where it writes the run folder)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError
from .._events import Callback

if TYPE_CHECKING:
    from .._loop import Loop
    from ..state import Progress

SCALARS = ("train_top1", "train_f1_micro", "val_top1", "val_top5", "val_balanced_acc", "val_f1_macro", "val_map",
           "val_f1_micro")


class TensorBoard(Callback):
    """Writes the committed epoch's row (progress.rows[-1]); after EpochCommit in the loop's list."""

    def __init__(self, run_dir: Path, progress: Progress) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.progress = progress

    def after_epoch(self, loop: Loop) -> None:
        self.write(self.progress.rows[-1])

    def write(self, row: dict[str, Any]) -> None:
        """One metrics row (an L-BFGS solve, which has no loop, is written by the runner through this)."""
        step = row["epoch"]
        for key in ("train_loss", "val_loss"):
            self.writer.add_scalar(f"loss/{key[:-5]}", row[key], step)
        for key in SCALARS:
            if key in row:
                self.writer.add_scalar(f"accuracy/{key}", row[key], step)
        for key in ("lr_head", "lr_backbone"):
            if isinstance(row[key], float):
                self.writer.add_scalar(f"lr/{key[3:]}", row[key], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
