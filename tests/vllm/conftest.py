"""Fixtures of the vLLM tests (see vllm_helpers.py): ``made`` (checkpoints and the judge's numbers, made once in a
subprocess and cached in pytest's cache folder, or in ``WNA16_VLLM_CHECKPOINTS=DIR``) and ``serve`` (one engine per
checkpoint, quantization and dtype; start times written to ``reports/vllm-engines.json``). Nothing here skips: without
vLLM or auto-round the run fails at collection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from vllm_helpers import HERE, ROOT, VLLM_VERSION, Made, Serve, Served, run_engine, source_key


@pytest.fixture(scope="session")
def made(request: pytest.FixtureRequest) -> Made:
    configured = os.environ.get("WNA16_VLLM_CHECKPOINTS")
    root = Path(configured) if configured else request.config.cache.mkdir(f"wna16-vllm-{source_key()}")
    reference = root / "reference.json"
    if not reference.is_file():
        subprocess.run([sys.executable, str(HERE / "make_reference.py"), str(root)], check=True)
    data = json.loads(reference.read_text())
    return Made(root, data["prompts"], data["cases"])


@pytest.fixture(scope="session")
def serve(made: Made) -> Iterator[Serve]:
    """``serve(case, quantization, dtype, eager=False)``: the engine's results, computed once per session."""
    cache: dict[tuple[str, str | None, str, bool], Served] = {}

    def get(case: str, quantization: str | None, dtype: str, eager: bool = False) -> Served:
        key = (case, quantization, dtype, eager)
        if key not in cache:
            cache[key] = run_engine(made.path(case), made.prompts, quantization, dtype, eager=eager)
        return cache[key]

    yield get
    report = ROOT / "reports" / "vllm-engines.json"
    report.parent.mkdir(exist_ok=True)
    starts = {
        f"{c} quantization={q} dtype={d} {'eager' if e else s.compilation_mode}": round(s.start_s, 2)
        for (c, q, d, e), s in cache.items()
    }
    report.write_text(json.dumps({"vllm": VLLM_VERSION, "engine_start_s": starts}, indent=1) + "\n")
