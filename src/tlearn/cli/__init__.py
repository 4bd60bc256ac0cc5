"""The command line: `tlearn COMMAND ...` (the console script is `main`). The parser and the flags
built from the config fields, one function a command, and what they print; no logic of their own."""
from .main import main

__all__ = ["main"]
