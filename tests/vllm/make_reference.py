"""Make the checkpoints the vLLM tests serve and the judge's numbers for them (run as a subprocess of the tests).

``python make_reference.py OUT`` writes, under ``OUT``: one folder per case (auto-round RTN checkpoints on a tiny
random LLaMA, made by ``tests/checkpoints/make_checkpoints.py``; the 8-bit case is added here), and
``reference.json``: for each case and prompt, the float32 log-probabilities of every token at every position computed
by transformers with auto-round's own inference modules (``AutoRoundConfig(backend="auto")``, which also loads the
GPTQ and AWQ exports). A subprocess keeps auto-round (and its model-free mode, which spawns processes) out of the
process that runs the vLLM engines.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).parent
MAKER_PATH = HERE.parent / "checkpoints" / "make_checkpoints.py"

CASES = (
    "ar_w4g128_sym",  # auto_round:auto_gptq, 4-bit symmetric, with biases: served by vLLM's INC too
    "ar_w4g32_asym_gptq_zero0",  # asymmetric gptq-packed (v1 zeros), one group with a true zero of 0: INC refuses
    "ar_w8g64_asym",  # 8-bit asymmetric, native auto_round (v2 zeros): INC refuses
    "ar_mixed_fusable",  # 4-bit g128 with 8-bit (g128 and g32) and 16-bit layers: INC refuses the 8-bit ones
    "gptq_w4g128_sym",  # quant_method "gptq" (auto_gptq export), with biases
    "awq_w4g64_asym",  # quant_method "awq" (gemm)
    "act_order_w4g32_asym",  # auto_round:gptqmodel with a non-trivial g_idx on every layer (wna16's writer)
    "lc_w4g128_sym",  # compressed-tensors pack-quantized: auto-round's llm_compressor export, with biases
    "lc_w4g32_asym",  # the same, asymmetric (packed zero points)
    "wna16_ct_mixed",  # compressed-tensors from wna16's writer: 8-bit channel asym down_proj, 4-bit g32 asym others
    *(f"mixed_fused_{name}" for name in ("k8_regex", "v16", "up_g32")),  # issue 28: parts of a fused module disagree
    "qwen3_moe_w4g32_asym",  # issue 20: tiny Qwen3-MoE, experts as per-expert linears (auto_round:auto_gptq, v1 zeros)
)
EXACT_JUDGE = frozenset({"lc_w4g128_sym", "lc_w4g32_asym", "wna16_ct_mixed", "qwen3_moe_w4g32_asym"})
"""Cases transformers runs with the exactly dequantized float32 weights: compressed-tensors (auto-round has no
inference module for this format; tests/interop proves the dequantization equal to auto-round's own weights and to
compressed-tensors' decompressor) and the MoE case (transformers 5 keeps its experts as fused 3-D parameters, which
auto-round's per-linear modules do not replace; tests/interop proves the same dequantization equal to auto-round's)."""

MIXED_FUSABLE = {
    "model.layers.0.mlp.down_proj": {"bits": 8},
    "model.layers.1.self_attn.o_proj": {"bits": 16},
    "model.layers.1.mlp.gate_proj": {"bits": 8, "group_size": 32},
    "model.layers.1.mlp.up_proj": {"bits": 8, "group_size": 32},
}
"""Mixed bits that vLLM's fused modules can serve: gate/up (fused into gate_up_proj) agree, as must q/k/v. The mixed
case of make_checkpoints.py gives q_proj and up_proj settings their fused partners lack; vLLM cannot serve it with one
kernel per fused module and wna16 refuses it with a message naming the parts (test_plugin.py)."""


MIXED_FUSED: dict[str, dict[str, dict[str, int]]] = {
    "k8_regex": {".*k_proj": {"bits": 8}},  # a regex key: k_proj at 8 bits inside every 4-bit qkv_proj
    "v16": {"model.layers.0.self_attn.v_proj": {"bits": 16}},  # one part of qkv_proj left in 16 bits
    "up_g32": {"model.layers.1.mlp.up_proj": {"bits": 4, "group_size": 32}},  # up_proj at g32 beside gate_proj g128
}
"""AutoRound mixed-precision recipes whose per-projection settings split vLLM's fused modules (q/k/v, gate/up)."""


def own_cases(make: ModuleType) -> dict[str, object]:
    """The cases made here with make_checkpoints.py's ``Case``."""
    mixed = {
        f"mixed_fused_{name}": make.Case(
            f"mixed_fused_{name}", "llama", "auto_round", 4, 128, True, "auto_round:auto_gptq", layer_config=config
        )
        for name, config in MIXED_FUSED.items()
    }
    return {
        **mixed,
        "ar_w8g64_asym": make.Case(
            "ar_w8g64_asym", "llama", "auto_round", 8, 64, False, "auto_round", env={"AR_ALLOW_W8_ASYM": "1"}
        ),
        "ar_mixed_fusable": make.Case(
            "ar_mixed_fusable", "llama", "auto_round", 4, 128, True, "auto_round:auto_gptq", layer_config=MIXED_FUSABLE
        ),
        "qwen3_moe_w4g32_asym": make.Case(
            "qwen3_moe_w4g32_asym", "qwen3_moe", "auto_round:auto_gptq", 4, 32, False, "auto_round:auto_gptq"
        ),
    }


PROMPTS: tuple[tuple[int, ...], ...] = (
    (1, 17, 42, 99, 5, 63, 120, 8, 31, 77, 54, 3, 90, 12, 66, 101),
    (1, 7, 7, 7, 88, 23, 45, 110, 2, 19),
    (1, 126, 64, 32, 16, 8, 4, 9, 81, 27, 50, 73, 36),
)
"""Token-ID prompts (vocabulary 128); the engines run with ``skip_tokenizer_init``."""


def maker() -> ModuleType:
    """``tests/checkpoints/make_checkpoints.py`` (the 8-bit case is made here with its ``Case``)."""
    spec = importlib.util.spec_from_file_location("make_checkpoints", MAKER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_checkpoints"] = module
    spec.loader.exec_module(module)
    return module


def exact_model(path: Path) -> torch.nn.Module:
    """The float32 transformers model holding each quantized layer's exactly dequantized weight
    (``make_checkpoints.exact_state``)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(maker().exact_state(path), strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    return model


def reference_logprobs(path: Path) -> list[list[list[float]]]:
    """Per prompt, per position p (0..L-1): log-probabilities [vocab] of the token following position p."""
    from transformers import AutoModelForCausalLM, AutoRoundConfig

    if path.name in EXACT_JUDGE:
        model = exact_model(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=AutoRoundConfig(backend="auto"), dtype=torch.float32, device_map="cpu"
        ).eval()
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            logits = model(torch.tensor([prompt])).logits[0].float()
            out.append(torch.log_softmax(logits, dim=-1).tolist())
    return out


def main(root: Path) -> None:
    """Make the checkpoints and ``reference.json`` under ``root``."""
    import auto_round_kernel  # noqa: F401  (auto-round-lib: its CPU kernels load the asymmetric formats)

    make = maker()
    own = own_cases(make)
    make.make(root, [c for c in CASES if c not in own])
    for name, case in own.items():
        make.make_case(case, root / name)
    reference = {"prompts": [list(p) for p in PROMPTS], "cases": {c: reference_logprobs(root / c) for c in CASES}}
    (root / "reference.json").write_text(json.dumps(reference))


if __name__ == "__main__":  # auto-round's model-free mode spawns processes: keep the entry point guarded
    main(Path(sys.argv[1]))
