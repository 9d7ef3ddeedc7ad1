"""The ``wna16`` console script. Core's subcommands live in modules here; other distributions add theirs through the
entry-point group ``wna16.commands`` (wna16-conformance adds ``conform`` and ``matrix``, next to the report they
read and write)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata
from types import ModuleType

COMMANDS: dict[str, str] = {
    "backends": "wna16.cli.backends",
    "inspect": "wna16.cli.inspect",
}
"""Core's subcommands: name -> module defining ``add_arguments(parser)`` and ``run(args) -> int``."""

ENTRY_POINT_GROUP = "wna16.commands"
"""Entry points naming further subcommand modules (same interface as :data:`COMMANDS`)."""

PROVIDED_BY = {"conform": "wna16-conformance", "matrix": "wna16-conformance"}
"""Subcommands documented in the README that another distribution provides: the hint when one is missing."""


def commands() -> dict[str, ModuleType]:
    """Every subcommand: core's, then those registered in :data:`ENTRY_POINT_GROUP` (a name core has wins)."""
    modules = {name: importlib.import_module(module) for name, module in COMMANDS.items()}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in modules:
            modules[entry.name] = entry.load()
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wna16``; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    modules = commands()
    if argv and argv[0] in PROVIDED_BY and argv[0] not in modules:
        dist = PROVIDED_BY[argv[0]]
        print(f"wna16 {argv[0]} comes with {dist}, which is not installed here: pip install {dist}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="wna16", description="Weight-only quantized linear layers (WnA16).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in modules.items():
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args))


if __name__ == "__main__":
    sys.exit(main())
