"""The ``wna16`` console script. Each subcommand lives in its own module here and registers itself in COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, str] = {
    "backends": "wna16.cli.backends",
    "matrix": "wna16.cli.matrix",
    "conform": "wna16.cli.conform",
    "inspect": "wna16.cli.inspect",
}
"""Subcommand name -> module defining ``add_arguments(parser)`` and ``run(args) -> int`` (all imported up front)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wna16``; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="wna16", description="Weight-only quantized linear layers (WnA16).")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args))


if __name__ == "__main__":
    sys.exit(main())
