"""Omni thinkers (LLM stages) through vLLM-Omni's stage pipeline with wna16, on CPU.

Tiny thinkers quantized by auto-round 0.16.1 (RTN: W4 g32 sym on ``thinker.model.layers``, one 8-bit
``extra_config`` layer) are served by ``Omni(...)`` with the registered ``<model_type>_thinker_only`` pipeline and
``quantization: wna16`` (thinker_stage.py, one engine start per test, fp32): Qwen2.5-Omni (dense) and Qwen3-Omni-MoE
(its routed experts stored as per-expert linears, one expert's ``down_proj`` at 8 bits, served by wna16's
``Wna16ExpertsMethod`` inside vLLM's ``RoutedExperts``). Their checkpoint names (``thinker.model.layers...``) reach
wna16 through vLLM-Omni's ``hf_to_vllm_mapper`` (``Wna16Config.apply_vllm_mapper``). The judge: transformers' own
model with every quantized layer replaced by wna16's oracle dequantization (fp32, experts written into
transformers' fused expert parameters), greedy, full thinker forward per step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from oracle import load_dequantized
from safetensors.torch import load_file

from wna16.errors import UnmatchedNamesError
from wna16.integrations.vllm_omni import component_config

HERE = Path(__file__).parent
LOGPROB_BOUND = 1e-4
"""Both sides compute in fp32 on the same weights; they differ only in kernel order (vLLM-CPU's attention and
wna16's backend vs transformers' SDPA and dense matmul): ~1e-6 on log-probabilities of magnitude ~5. The unquantized
thinker differs by ~1e-2 (asserted below), so the bound separates the two by two orders of magnitude."""


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HERE / "thinker_stage.py"), *args], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **env})  # fmt: skip


def _script(*args: str, **env: str) -> str:
    done = _run(*args, **env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


SERVED = re.compile(r"\] (?P<module>\S+): .* served by (wna16 backend|runs) (?P<backend>.+)$")
"""wna16's debug line for each quantized module it prepared (``Wna16LinearMethod``, ``Wna16FusedMethod``,
``Wna16ExpertsMethod``), printed by the stage's worker under ``VLLM_LOGGING_LEVEL=DEBUG``."""


def transformers_greedy(full: Path, quantized: Path | None, layers: int = 0) -> tuple[list[int], list[float]]:
    """Greedy tokens and log-probabilities of transformers' thinker (the class ``full``'s config names): the full
    model's weights, with the quantized checkpoint's ``layers`` quantized layers dequantized by wna16's oracle (and its
    other tensors as written) when ``quantized`` is given."""
    from thinker_stage import NEW_TOKENS, PROMPT

    (architecture,) = json.loads((full / "config.json").read_text())["architectures"]
    cls = getattr(transformers, architecture)
    if cls is transformers.Qwen2_5OmniForConditionalGeneration:  # its from_pretrained requires the talker's speakers
        model = cls(cls.config_class.from_pretrained(full)).float().eval()
        model.load_state_dict(load_file(full / "model.safetensors"))
    else:  # transformers' loader fuses the saved per-expert linears into its experts modules
        model = cls.from_pretrained(full, dtype=torch.float32).eval()
    if quantized is not None:
        assert load_dequantized(model, quantized) == layers
    ids, logprobs = list(PROMPT), []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model.thinker(input_ids=torch.tensor([ids])).logits[0, -1].float()
            step = torch.log_softmax(logits, dim=-1)
            token = int(step.argmax())
            ids.append(token)
            logprobs.append(float(step[token]))
    return ids[len(PROMPT) :], logprobs


def serve_and_judge(tmp_path: Path, model: str, layers: int, modules: set[str]) -> None:
    """Make ``model``'s tiny checkpoints, serve the quantized one through its thinker-only stage, and require wna16
    to have prepared exactly ``modules`` (runtime names under ``thinker.language_model.model.layers.0.``) and the
    served greedy tokens and log-probabilities to equal the oracle's and to differ from the unquantized model's."""
    _script("make", str(tmp_path), model)
    full, quantized = tmp_path / "full", tmp_path / "quantized"
    config = json.loads((quantized / "config.json").read_text())["quantization_config"]
    assert config["block_name_to_quantize"] == "thinker.model.layers" and config["autoround_version"] == "0.16.1"
    out = _script("serve", str(quantized), VLLM_LOGGING_LEVEL="DEBUG")
    backends = {m["module"]: m["backend"].strip("'") for m in map(SERVED.search, out.splitlines()) if m is not None}
    assert set(backends) == {f"thinker.language_model.model.layers.0.{m}" for m in modules}, backends
    (line,) = [ln for ln in out.splitlines() if ln.startswith("THINKER ")]
    served = json.loads(line.removeprefix("THINKER "))
    tokens, logprobs = transformers_greedy(full, quantized, layers)
    diff = max(abs(a - b) for a, b in zip(served["logprobs"], logprobs, strict=True))
    _, unquantized = transformers_greedy(full, None)
    diff_full = max(abs(a - b) for a, b in zip(served["logprobs"], unquantized, strict=True))
    print(f"{model} thinker stage: start {served['start_s']:.1f} s, max |dlogprob| {diff:.2e} vs oracle, "
          f"{diff_full:.2e} vs unquantized; wna16 backends {backends}")  # fmt: skip
    assert served["tokens"] == tokens, (served, tokens)
    assert diff <= LOGPROB_BOUND, (served, logprobs)
    assert diff_full > 100 * LOGPROB_BOUND, (served, unquantized)


def test_the_thinker_stage_serves_an_autoround_checkpoint_with_wna16(tmp_path: Path) -> None:
    attention, mlp = ("qkv_proj", "o_proj"), ("gate_up_proj", "down_proj")
    # q, k, v, o, gate, up, down of the one layer, fused by vLLM as qkv_proj and gate_up_proj
    serve_and_judge(tmp_path, "qwen2_5_omni", 7, {*(f"self_attn.{m}" for m in attention), *(f"mlp.{m}" for m in mlp)})
    check_unmatched_names(tmp_path / "quantized", tmp_path / "misnamed")


def test_the_qwen3_omni_moe_thinker_stage_serves_autoround_experts_with_wna16(tmp_path: Path) -> None:
    # q, k, v, o and 4 experts' gate, up, down; vLLM's RoutedExperts of the layer is one module
    serve_and_judge(tmp_path, "qwen3_omni_moe", 4 + 4 * 3, {"self_attn.qkv_proj", "self_attn.o_proj", "mlp.experts"})


def check_unmatched_names(quantized: Path, misnamed: Path) -> None:
    """The thinker checkpoint's names pass wna16's check through the Qwen2.5-Omni preset (``thinker.model.`` ->
    ``thinker.language_model.model.``, as vLLM-Omni's mapper); an ``extra_config`` key naming no module is refused
    with :class:`UnmatchedNamesError` naming it and the closest runtime names, before any engine work. The stage
    itself (``Omni(...)`` with ``quantization: wna16``) refuses the same checkpoint while vLLM builds the stage's
    config (``Wna16Config.maybe_update_config``, checkpoint names), naming the key and the closest checkpoint name,
    instead of dying at load on a bare shape ``AssertionError``."""
    assert component_config(quantized) is not None
    shutil.copytree(quantized, misnamed)
    data = json.loads((misnamed / "config.json").read_text())
    data["quantization_config"]["extra_config"] = {"thinker.model.layers.0.mlp.down_projj": {"bits": 8}}
    (misnamed / "config.json").write_text(json.dumps(data))
    with pytest.raises(UnmatchedNamesError, match=r"down_projj.*closest runtime names: "
                       r"'thinker\.language_model\.model\.layers\.0\.mlp\.down_proj'"):  # fmt: skip
        component_config(misnamed)
    done = _run("serve", str(misnamed))
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "THINKER " not in done.stdout, output[-4000:]
    assert ("names that match no checkpoint module: 'thinker.model.layers.0.mlp.down_projj' (closest checkpoint "
            "names: 'thinker.model.layers.0.mlp.down_proj'") in output, output[-4000:]  # fmt: skip
