"""The flags of `tlearn suggest` and `tlearn label` (_label_commands.py runs them; label/ does the work)."""
from __future__ import annotations

import argparse

from ..config import DEVICES


def add_suggest_flags(suggest: argparse.ArgumentParser) -> None:
    suggest.add_argument("--pool", required=True, metavar="DIR", help="folder of images, labelled or not")
    suggest.add_argument("--n", type=int, default=20, help="how many images to suggest (default 20)")
    suggest.add_argument("--out", required=True, help="CSV to write: path,rank,score,guess,guess_prob,reason")
    suggest.add_argument("--labels", default=None,
                         help="labels table as train --labels reads it (paths relative to the pool); "
                              "images it lists are not suggested")
    _add_backbone_flags(suggest)


def add_label_flags(label: argparse.ArgumentParser) -> None:
    label.add_argument("--pool", required=True, metavar="DIR",
                       help="folder of images (in review mode: the data root the audit read)")
    label.add_argument("--labels", required=True,
                       help="labels table to write (created if absent), as train --labels reads it")
    label.add_argument("--classes", default=None, help="comma-separated class names (digit keys in this order)")
    label.add_argument("--review", default=None, metavar="AUDIT_DIR",
                       help="walk an audit's likely label errors and near-duplicates instead")
    label.add_argument("--refit-every", type=int, default=10, metavar="K",
                       help="refit the probe and plan the next round after every K answers (default 10)")
    label.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    label.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    _add_backbone_flags(label)


def _add_backbone_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--run", default=None, help="a run folder whose backbone makes the features")
    command.add_argument("--model", default=None, help="backbone by name (default efficientnet_lite0)")
    command.add_argument("--weights", default="default")
    command.add_argument("--image-size", type=int, default=None)
    command.add_argument("--seed", type=int, default=0, help="k-means seed (TypiClust, once half the pool is covered)")
    command.add_argument("--batch-size", type=int, default=64)
    command.add_argument("--device", choices=DEVICES, default="auto")
    command.add_argument("--no-cache", dest="use_cache", action="store_false")
    command.add_argument("--cache-dir", default=None)
