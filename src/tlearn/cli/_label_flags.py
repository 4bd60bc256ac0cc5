"""The flags of `tlearn suggest` (_label_commands.py runs it; label/ does the work)."""
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
    suggest.add_argument("--run", default=None, help="a run folder whose backbone makes the features")
    suggest.add_argument("--model", default=None, help="backbone by name (default efficientnet_lite0)")
    suggest.add_argument("--weights", default="default")
    suggest.add_argument("--image-size", type=int, default=None)
    suggest.add_argument("--seed", type=int, default=0, help="k-means seed")
    suggest.add_argument("--batch-size", type=int, default=64)
    suggest.add_argument("--device", choices=DEVICES, default="auto")
    suggest.add_argument("--no-cache", dest="use_cache", action="store_false")
    suggest.add_argument("--cache-dir", default=None)
