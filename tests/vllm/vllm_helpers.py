"""What the vLLM tests share: the made checkpoints with transformers + auto-round's numbers, and running one engine.

These tests run only in the vLLM environment (``nox -s vllm``). They import vLLM and auto-round unconditionally, so a
run without them fails at collection; nothing here skips.

- ``made``: the checkpoints and ``reference.json`` of ``make_reference.py``, made once in a subprocess and cached in
  pytest's cache folder (keyed by the sources that make them and the tools' versions); ``WNA16_VLLM_CHECKPOINTS=DIR``
  uses (or fills) DIR instead.
- ``serve``: one vLLM engine per (checkpoint, quantization, dtype, eager), CPU, token-ID prompts with
  ``skip_tokenizer_init``, full prompt log-probabilities; each engine is torn down before the next starts, and its start
  time is recorded in ``reports/vllm-engines.json``. Engines run in vLLM's default mode (compiled: ``torch.compile``
  traces the model, wna16's layers as ``wna16::linear`` ops), as users run vLLM; ``eager=True`` (``enforce_eager``) is
  the one comparison case.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Before vLLM is imported: one process (the engine core in this one, so layers can be inspected), a small KV cache,
# no model hub, and functions allowed through apply_model.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Only wna16's general plugin: vLLM-Omni's (installed with --no-deps for test_omni.py) cannot import under vLLM 0.32.
os.environ.setdefault("VLLM_PLUGINS", "wna16")

import auto_round  # noqa: F401  (required: it makes the checkpoints and the judge's numbers)
import vllm

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
VOCAB = 128
VLLM_VERSION = str(vllm.__version__)


@dataclass(frozen=True)
class Made:
    """Where the checkpoints are, the prompts and the reference log-probabilities per case."""

    root: Path
    prompts: list[list[int]]
    reference: dict[str, list[list[list[float]]]]

    def path(self, case: str) -> Path:
        return self.root / case


def source_key() -> str:
    sources = [HERE / "make_reference.py", ROOT / "tests" / "checkpoints" / "make_checkpoints.py"]
    sources += [
        ROOT / "core" / "src" / "wna16" / "checkpoint" / "write.py",
        ROOT / "core" / "src" / "wna16" / "quantize.py",
    ]
    versions = {d: metadata.version(d) for d in ("auto-round", "torch", "transformers")}
    text = "".join(p.read_text() for p in sources if p.exists()) + json.dumps(versions, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Served:
    """What one engine computed: ``logprobs[prompt][p]`` = log-probabilities [vocab] of the token after position p
    (p = 0..L-2, teacher-forced from the prompt), ``next_tokens`` (greedy token after each prompt), the quantization
    method (and wna16 backend) of every layer, and the engine's start time."""

    logprobs: list[list[list[float]]]
    next_tokens: list[int]
    methods: dict[str, tuple[str, str]]
    start_s: float
    compilation_mode: str


def _layer_methods(model: Any) -> dict[str, tuple[str, str]]:
    return {
        name: (type(module.quant_method).__name__, str(getattr(module.quant_method, "backend_name", "")))
        for name, module in model.named_modules()
        if getattr(module, "quant_method", None) is not None
    }


def _dense(entry: dict[int, Any]) -> list[float]:
    row = [float("-inf")] * VOCAB
    for token, logprob in entry.items():
        row[token] = float(logprob.logprob)
    return row


def run_engine(
    path: Path,
    prompts: list[list[int]],
    quantization: str | None,
    dtype: str,
    tensor_parallel_size: int = 1,
    eager: bool = False,
) -> Served:
    """Start one engine (compiled unless ``eager``), compute, tear it down."""
    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    llm = LLM(
        model=str(path),
        quantization=quantization,
        dtype=dtype,
        enforce_eager=eager,
        skip_tokenizer_init=True,
        max_model_len=64,
        max_num_seqs=4,
        max_logprobs=VOCAB,
        seed=0,
        tensor_parallel_size=tensor_parallel_size,
    )
    start_s = time.perf_counter() - start
    mode = llm.llm_engine.vllm_config.compilation_config.mode
    mode_name = str(getattr(mode, "name", mode))  # CompilationMode.NONE under enforce_eager
    try:
        methods = llm.apply_model(_layer_methods)[0]
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=VOCAB, detokenize=False)
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        logprobs = [[_dense(entry) for entry in out.prompt_logprobs[1:]] for out in outputs]
        next_tokens = [out.outputs[0].token_ids[0] for out in outputs]
    finally:
        del llm
        gc.collect()
        cleanup_dist_env_and_memory()
    return Served(logprobs, next_tokens, methods, start_s, mode_name)


Serve = Callable[..., Served]
"""The ``serve`` fixture: ``serve(case, quantization, dtype, eager=False)``."""
