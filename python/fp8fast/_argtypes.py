"""argparse pieces shared by the command-line modules: value types and the parser class."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors end like every other error of the command:
    the usage, then one ``fp8fast: error: ...`` line (naming the subcommand), exit status 2.
    Subcommand parsers made by ``add_subparsers`` are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.split(None, 1)[1:]  # "fp8fast quantize" -> ["quantize"]
        where = f"{command[0]}: " if command else ""
        self.exit(2, f"fp8fast: error: {where}{message}\n")


def positive_int(text: str) -> int:
    """A whole number >= 1, or an argparse usage error naming the value."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {v}")
    return v
