"""The ``wna16`` console script. Core's subcommands live in modules here; other distributions add theirs through the
entry-point group ``wna16.commands`` (wna16-conformance adds ``conform`` and ``matrix``, next to the report they
read and write).

Exit status, the same for every subcommand (the dispatch here maps outcomes to codes):

- 0: done, nothing wrong;
- 1: the command ran and found problems (the coverage audit, a conformance failure, a failing matrix cell);
- 2: bad input or usage: a wna16 error (unreadable or corrupt checkpoint, bad report, unknown or refusing
  ``WNA16_BACKEND``), an unknown ``--device`` string, an argument argparse refuses; one line on stderr, no traceback;
- 3: an internal error (a bug): the traceback is printed;
- 130: interrupted (Ctrl-C); 141: stdout closed early (``wna16 inspect ... | head``), ending quietly like any Unix
  tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
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


EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141


def _check_environment(args: argparse.Namespace) -> str | None:
    """What is wrong with the options every command shares (``--device``, ``WNA16_BACKEND``), or None."""
    import torch

    from wna16.errors import Wna16Error
    from wna16.registry import ENV_FORCE, default_registry

    device = getattr(args, "device", None)
    if isinstance(device, str):
        try:
            torch.device(device)
        except (RuntimeError, ValueError) as exc:
            return f"--device {device!r}: not a device string ({exc})"
    forced = os.environ.get(ENV_FORCE)
    if forced:
        try:
            default_registry().get(forced)
        except Wna16Error as exc:
            return f"{ENV_FORCE}={forced!r}: {exc}"
    return None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into a closed pipe says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wna16``; returns the process exit status (see the module docstring)."""
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
    args = parser.parse_args(argv)  # usage errors exit 2 here, as argparse does
    from wna16.errors import Wna16Error

    try:
        problem = _check_environment(args)
        if problem is not None:
            print(f"wna16 {args.command}: {problem}", file=sys.stderr)
            return EXIT_USAGE
        status = int(modules[args.command].run(args))
        sys.stdout.flush()  # inside the try: a closed pipe found at the final flush is still a quiet ending
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Wna16Error as exc:
        print(f"wna16 {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        print(f"wna16 {args.command}: internal error (a bug in wna16 or a backend; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
