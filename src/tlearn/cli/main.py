"""`tlearn COMMAND ...`: parse, run the command's cheap checks, then its module, which imports the
library. User errors print one line on stderr and exit 2, never a traceback.

The command modules are imported only once their command is chosen and its checks have passed:
they import PyTorch (through the library), so `tlearn --help`, a flag error or a missing folder
answers at once.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

from ..allocator import configure_allocator
from ..errors import UserError
from ._checks import CHECKS, is_main_process
from ._parser import build_parser

# command -> (module in this package, function): one function a command
COMMANDS = {
    "train": ("_training_commands", "train"), "demo": ("_training_commands", "demo"),
    "lr-find": ("_training_commands", "lr_find"), "select": ("_training_commands", "select"),
    "eval": ("_run_commands", "evaluate"), "predict": ("_run_commands", "predict"),
    "export": ("_run_commands", "export"), "features": ("_run_commands", "features"),
    "audit": ("_data_commands", "audit"), "models": ("_data_commands", "models"),
    "serve": ("_serve_command", "serve"), "suggest": ("_label_commands", "suggest"),
    "distill": ("_training_commands", "distill"), "push": ("_run_commands", "push"),
    "label": ("_label_commands", "label"),
}


def main(argv: list[str] | None = None) -> int:
    # First, before PyTorch allocates anything: keep freed memory instead of re-faulting every
    # step's activations (allocator.py; about 1.5x fine-tuning and 1.7-1.9x eval on 2 cores).
    allocator = configure_allocator()
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose - args.quiet, to_stderr=getattr(args, "json", False))
    talks = args.command in ("train", "demo", "lr-find", "distill")
    logging.getLogger("tlearn").log(logging.INFO if talks else logging.DEBUG, allocator)
    try:
        CHECKS[args.command](args)
        module, function = COMMANDS[args.command]
        return getattr(importlib.import_module(f".{module}", __package__), function)(args)
    except UserError as error:
        print(f"tlearn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tlearn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tlearn models | head`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a redirected or captured stdout included)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _configure_logging(verbosity: int, to_stderr: bool = False) -> None:
    """The library logs to the "tlearn" logger; the command line shows it on stdout, plain, at
    INFO (-q: warnings only, -v: debug too), or on stderr when stdout is JSON (`eval --json`).
    Under torchrun only rank 0 talks."""
    handler = logging.StreamHandler(sys.stderr) if to_stderr else _Stdout()
    handler.setFormatter(_Format())
    logger = logging.getLogger("tlearn")
    logger.handlers[:] = [handler]
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else logging.WARNING
    logger.setLevel(level if is_main_process() else logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
