"""The flags of `tlearn select` (cli.py's cmd_select runs it; select.py does the work)."""
from __future__ import annotations

import argparse

from ._flags import PSEUDO_FIELDS, add_config_flags

# select: the probe's settings are fixed (linear-probe, L-BFGS head on cached features); the training
# flags left are those of --finetune-best's two-stage run.
SELECT_SKIP = frozenset({"name", "image_size", "strategy", "head_solver", "unfreeze_last", "probe_augment",
                         "balance", "balance_tau", "detect_anomaly"})


def add_select_flags(select: argparse.ArgumentParser) -> None:
    select.add_argument("--models", default=None, help="comma-separated names (default: 10 small backbones of "
                                                       "different families, those with weights on this machine)")
    select.add_argument("--image-sizes", default=None, help="comma-separated input sizes, e.g. 96,128,224 "
                                                            "(default: each model's own)")
    select.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="skip candidates whose estimate (from a timing batch) exceeds what is left")
    select.add_argument("--out", required=True, help="folder for leaderboard.csv, leaderboard.html, select.json")
    select.add_argument("--finetune-best", action="store_true",
                        help="train the winner two-stage into OUT/best (--epochs, --head-epochs, --lr... apply)")
    select.add_argument("--download", action="store_true", help="download missing pretrained weights")
    add_config_flags(select, skip=SELECT_SKIP | PSEUDO_FIELDS)
