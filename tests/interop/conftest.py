"""Fixtures of the interop tests: the real checkpoints, made once per environment and cached on disk.

The checkpoints are made by ``tests/checkpoints/make_checkpoints.py`` (auto-round, plus wna16's writer for what
auto-round cannot make offline) into pytest's cache folder, keyed by the hash of that script and the tools' versions;
``WNA16_INTEROP_CHECKPOINTS=DIR`` uses (or fills) DIR instead. These tests need the interop environment
(``nox -s interop``): without auto-round they fail at import, they never skip. Under xdist a file lock makes one
worker make the checkpoints while the others wait.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from filelock import FileLock

CHECKPOINTS = Path(__file__).parent.parent / "checkpoints"


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_checkpoints", CHECKPOINTS / "make_checkpoints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_checkpoints"] = module
    spec.loader.exec_module(module)
    return module


MAKER = _maker()


@pytest.fixture(scope="session")
def checkpoints(request: pytest.FixtureRequest) -> Path:
    """Folder holding one subfolder per case (see make_checkpoints.CASES and writer cases) and MANIFEST.json."""
    configured = os.environ.get("WNA16_INTEROP_CHECKPOINTS")
    root = Path(configured) if configured else request.config.cache.mkdir(f"wna16-checkpoints-{MAKER.source_hash()}")
    manifest = root / "MANIFEST.json"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):  # xdist workers: one makes them, the others wait and reuse
        if not manifest.is_file() or set(json.loads(manifest.read_text())["cases"]) != set(MAKER.MAKERS):
            MAKER.make(root)
    return root
