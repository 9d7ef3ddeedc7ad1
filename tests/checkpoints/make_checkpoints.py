"""Make the tiny real checkpoints the interop tests judge wna16 against (run inside the interop environment).

Every checkpoint is written by the tool users download checkpoints from: auto-round (pure RTN, ``iters=0,
disable_opt_rtn=True``, no data set, no model hub) on tiny random models built in memory, so the files have exactly
auto-round's ``quantization_config`` and tensor layout. Where auto-round cannot write a case offline (act order, the
model families of the remap presets), :mod:`wna16.checkpoint.write` writes auto-round's layout from wna16's own RTN.

Reproducible: every model is seeded; ``MANIFEST.json`` records auto-round's, torch's, transformers' and diffusers'
versions and a SHA-256 of every file. ``python make_checkpoints.py OUT [CASE ...]`` writes ``OUT/<case>/`` (the
folder holding ``config.json``, or ``model_index.json`` for a pipeline). The interop tests call :func:`make` from a
session fixture, cached on disk by the hash of this file and the versions, so CI makes them once per run (~1 min).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

LLAMA = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}
VOCAB = 128
ZERO_OF_ZERO = ("model.layers.0.self_attn.q_proj", 0, slice(0, 32))
"""(layer, output row, input columns) made all positive so that asymmetric RTN gives that group a true zero of 0."""

MIXED = {
    "model.layers.0.mlp.down_proj": {"bits": 8},
    "model.layers.1.self_attn.q_proj": {"bits": 8, "group_size": 32},
    "model.layers.1.mlp.up_proj": {"bits": 16},
}


@dataclass(frozen=True)
class Case:
    """One checkpoint: what auto-round is asked for (``format``, scheme, ``layer_config``) on which tiny model."""

    name: str
    model: str  # "llama", "qwen3_moe" or "flux"
    format: str
    bits: int
    group_size: int
    sym: bool
    expect_packing: str
    bias: bool = False
    zero_of_zero: bool = False
    layer_config: dict[str, dict[str, int]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    hidden: int = LLAMA["hidden_size"]


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("ar_w4g128_sym", "llama", "auto_round", 4, 128, True, "auto_round:auto_gptq", bias=True),
        Case("ar_w4g32_asym_awq", "llama", "auto_round", 4, 32, False, "auto_round:auto_awq"),
        Case(
            "ar_w4g32_asym_gptq_zero0",
            "llama",
            "auto_round:auto_gptq",
            4,
            32,
            False,
            "auto_round:auto_gptq",
            zero_of_zero=True,
        ),
        Case("ar_gptqmodel_w4g64_asym", "llama", "auto_round:gptqmodel", 4, 64, False, "auto_round:gptqmodel"),
        Case("ar_gptqmodel_w2g32_sym", "llama", "auto_round:gptqmodel", 2, 32, True, "auto_round:gptqmodel"),
        Case("ar_native_w2g32_asym", "llama", "auto_round", 2, 32, False, "auto_round"),
        Case("ar_native_w3g64_asym", "llama", "auto_round", 3, 64, False, "auto_round"),
        Case("gptq_w4g128_sym", "llama", "auto_gptq", 4, 128, True, "auto_gptq", bias=True),
        Case("awq_w4g64_asym", "llama", "auto_awq", 4, 64, False, "auto_awq"),
        Case("ar_mixed_w4g128_sym", "llama", "auto_round", 4, 128, True, "auto_round:auto_gptq", layer_config=MIXED),
        Case("flux_w4g64_sym", "flux", "auto_round", 4, 64, True, "auto_round:auto_gptq"),
    )
}


LLMC_CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("lc_w4g128_sym", "llama", "llm_compressor", 4, 128, True, "compressed-tensors", bias=True),
        Case("lc_w4g32_asym", "llama", "llm_compressor", 4, 32, False, "compressed-tensors"),
        Case("lc_w8channel_sym", "llama", "llm_compressor", 8, -1, True, "compressed-tensors"),
        Case("lc_mixed_w4g128_sym", "llama", "llm_compressor", 4, 128, True, "compressed-tensors", layer_config=MIXED),
    )
}
"""auto-round's ``format="llm_compressor"`` export (compressed-tensors ``pack-quantized``, written through the
installed compressed-tensors' own compressor). Each has a twin ``<name>_ar``: the same seeded model and scheme
exported as ``auto_round``, which auto-round's own inference modules load (the weights the export must equal)."""

LLMC_TWINS: dict[str, Case] = {
    f"{name}_ar": Case(f"{name}_ar", c.model, "auto_round", c.bits, c.group_size, c.sym, "", c.bias,
                       layer_config=c.layer_config)
    for name, c in LLMC_CASES.items()
}  # fmt: skip

CT_WRITER = "wna16_ct_mixed"
"""A compressed-tensors checkpoint written by wna16's writer: 8-bit per-channel asymmetric ``down_proj`` (a regex
target), 4-bit group-32 asymmetric everything else (``Linear``), ``lm_head`` ignored."""


def tiny_tokenizer() -> Any:
    """A word-level tokenizer built in memory (auto-round wants one; no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(VOCAB - 3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def tiny_llama(bias: bool = False, seed: int = 0, hidden: int = LLAMA["hidden_size"]) -> torch.nn.Module:
    """A 2-layer LLaMA (hidden 256, intermediate 512 unless ``hidden`` says otherwise) with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    sizes = {**LLAMA, "hidden_size": hidden, "intermediate_size": 2 * hidden}
    config = LlamaConfig(
        **sizes,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        attention_bias=bias,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.05)
    return model


QWEN3_MOE: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "num_experts": 8, "num_experts_per_tok": 2,
    "norm_topk_prob": True, "decoder_sparse_step": 1,
}  # fmt: skip
"""The tiny Qwen3-MoE: every layer sparse, top-2 of 8 experts renormalised (as Qwen3-30B-A3B's config says), expert
intermediate size 64 (tensor parallelism over two ranks leaves 32 rows: whole groups of 32)."""


def tiny_qwen3_moe(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny Qwen3-MoE (:data:`QWEN3_MOE`, ``overrides`` on top) with random weights; auto-round writes its experts
    as per-expert linears ``mlp.experts.<e>.gate_proj/up_proj/down_proj``."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    # auto-round's MoE export saves the config as given: name the architecture (vLLM resolves its runner from it).
    config = Qwen3MoeConfig(vocab_size=VOCAB, max_position_embeddings=128, architectures=["Qwen3MoeForCausalLM"],
                            **{**QWEN3_MOE, **overrides})  # fmt: skip
    return Qwen3MoeForCausalLM(config).eval()


def tiny_qwen3_omni_thinker(seed: int = 0) -> torch.nn.Module:
    """A tiny Qwen3-Omni-MoE thinker (the flagship's MoE language model with its audio and vision towers): 2 sparse
    text layers of top-2 of 4 experts (hidden 128, expert intermediate 64), one-layer towers. auto-round quantizes
    the text layers (``model.layers``, experts as per-expert linears) and leaves the towers in 16 bits."""
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeThinkerConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    torch.manual_seed(seed)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6], "interleaved": True}
    config = Qwen3OmniMoeThinkerConfig(
        text_config={
            "vocab_size": VOCAB, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "moe_intermediate_size": 64, "num_experts": 4,
            "num_experts_per_tok": 2, "max_position_embeddings": 128, "rope_parameters": rope,
        },
        audio_config={
            "num_mel_bins": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "d_model": 64, "output_dim": 128, "downsample_hidden_size": 32, "max_source_positions": 64,
        },
        vision_config={
            "depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128,
            "num_position_embeddings": 64, "deepstack_visual_indexes": [0],
        },
        architectures=["Qwen3OmniMoeThinkerForConditionalGeneration"],
    )  # fmt: skip
    return Qwen3OmniMoeThinkerForConditionalGeneration(config).eval()


EXPERT_LINEAR = re.compile(r"(?P<block>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)")
"""A per-expert linear of a checkpoint, as auto-round writes experts."""


def exact_state(path: Path, **load: Any) -> dict[str, torch.Tensor]:
    """The float32 state of the checkpoint's model with every quantized layer exactly dequantized (wna16's reference;
    tests/interop proves it equal to auto-round's own modules): plain tensors as stored, ``<layer>.weight``/``.bias``
    per quantized linear, and per-expert linears stacked the way transformers 5 keeps experts, ``<block>.gate_up_proj``
    [E, 2I, H] (gate rows first) and ``<block>.down_proj`` [E, H, I]. ``load``: :func:`wna16.load_checkpoint`'s options
    (default: the checkpoint's own names)."""
    import wna16
    from wna16.checkpoint.remap import Remap
    from wna16.reference import dequantize

    ckpt = wna16.load_checkpoint(path, **{"remap": Remap.IDENTITY, **load})
    state = {name: ckpt.tensor(name).float() for name in ckpt.unquantized}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name in ckpt.layers:
        expert = EXPERT_LINEAR.fullmatch(name)
        if expert is not None:
            block = experts.setdefault(expert["block"], {})
            block.setdefault(expert["proj"], {})[int(expert["expert"])] = dequantize(ckpt.weight(name)).float()
            continue
        state[f"{name}.weight"] = dequantize(ckpt.weight(name)).float()
        bias = ckpt.bias(name)
        if bias is not None:
            state[f"{name}.bias"] = bias.float()
    for block, projs in experts.items():
        order = sorted(projs["gate_proj"])
        state[f"{block}.gate_up_proj"] = torch.stack([torch.cat([projs["gate_proj"][e], projs["up_proj"][e]])
                                                      for e in order])  # fmt: skip
        state[f"{block}.down_proj"] = torch.stack([projs["down_proj"][e] for e in order])
    return state


def tiny_flux_pipeline(seed: int = 0) -> Any:
    """A ``FluxPipeline`` holding only a 1+1-block FLUX transformer (inner dim 128) and a scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=32,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=64,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        axes_dims_rope=(16, 24, 24),
    ).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def _force_zero_of_zero(model: torch.nn.Module) -> None:
    layer, row, cols = ZERO_OF_ZERO
    with torch.no_grad():
        weight = model.get_submodule(layer).weight
        weight[row, cols] = weight[row, cols].abs() + 1e-3


def _folder_with(root: Path, marker: str) -> Path:
    """auto-round writes into a scheme-named subfolder: the one folder holding ``marker``."""
    found = sorted(p.parent for p in root.rglob(marker))
    if len(found) != 1:
        raise RuntimeError(f"{root}: expected one folder holding {marker}, found {found}")
    return found[0]


def make_case(case: Case, out: Path) -> None:
    """Quantize the case's tiny model with auto-round into ``out`` (replaced)."""
    from auto_round import AutoRound

    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if case.model == "flux":
                model: Any = tiny_flux_pipeline()
                extra: dict[str, Any] = {"low_cpu_mem_usage": False}
                tokenizer = None
            elif case.model == "qwen3_moe":
                model, extra, tokenizer = tiny_qwen3_moe(), {}, tiny_tokenizer()
            else:
                model = tiny_llama(case.bias, hidden=case.hidden)
                if case.zero_of_zero:
                    _force_zero_of_zero(model)
                extra, tokenizer = {}, tiny_tokenizer()
            rounder = AutoRound(
                model,
                tokenizer=tokenizer,
                bits=case.bits,
                group_size=case.group_size,
                sym=case.sym,
                iters=0,
                disable_opt_rtn=True,
                device_map="cpu",
                layer_config=case.layer_config or None,
                **extra,
            )
            rounder.quantize_and_save(tmp, format=case.format)
            marker = "model_index.json" if case.model == "flux" else "config.json"
            src = _folder_with(Path(tmp), marker)
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(src, out)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def versions() -> dict[str, str]:
    """Versions of the tools that made the checkpoints."""
    names = ("auto-round", "auto-round-lib", "torch", "transformers", "diffusers", "safetensors", "compressed-tensors")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _llama_state(prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """The tiny LLaMA's tensors under a family's checkpoint prefix (``model.`` -> ``prefix + "model."``)."""
    return {prefix + k: v for k, v in tiny_llama(seed=seed).state_dict().items()}


@dataclass(frozen=True)
class Family:
    """A checkpoint wna16's writer makes in a family's naming, for the remap preset of that family."""

    name: str
    config: dict[str, Any]
    blocks: tuple[str, ...]
    lm_prefix: str = ""
    extra_16bit: tuple[str, ...] = ()
    diffusers: str = ""  # a diffusers transformer class: its real tiny state dict and config
    components: tuple[str, ...] = ()


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("qwen2_5_omni", {"architectures": ["Qwen2_5OmniForConditionalGeneration"]}, ("thinker.model.layers",),
               "thinker."),
        Family("qwen3_omni", {"architectures": ["Qwen3OmniMoeForConditionalGeneration"]}, ("thinker.model.layers",),
               "thinker.", ("talker.model.layers.0.self_attn.q_proj.weight", "talker.codec_head.weight")),
        Family("qwen3_tts", {"architectures": ["Qwen3TTSForConditionalGeneration"]}, ("talker.model.layers",),
               "talker."),
        Family("glm_image", {"architectures": ["GlmImageForConditionalGeneration"]}, ("model.language_model.layers",),
               "model.language_"),
        Family("bagel", {"architectures": ["BagelForConditionalGeneration"]}, ("language_model.model.layers",),
               "language_model."),
        Family("qwen_image", {}, ("transformer_blocks",), diffusers="QwenImageTransformer2DModel",
               components=("transformer",)),
        Family("wan2_2", {}, ("blocks",), diffusers="WanTransformer3DModel",
               components=("transformer", "transformer_2")),
    )
}  # fmt: skip
"""Families auto-round cannot make offline here (no tiny model class it traces, or a multi-stage model); FLUX is made
by auto-round itself (``flux_w4g64_sym``)."""

DIFFUSERS_TINY: dict[str, dict[str, Any]] = {
    "QwenImageTransformer2DModel": {
        "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 1, "attention_head_dim": 32,
        "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (8, 12, 12),
    },
    "WanTransformer3DModel": {
        "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 32, "in_channels": 4,
        "out_channels": 4, "text_dim": 32, "freq_dim": 32, "ffn_dim": 128, "num_layers": 1, "rope_max_seq_len": 32,
    },
}  # fmt: skip


def _diffusers_state(cls_name: str, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**DIFFUSERS_TINY[cls_name])
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return model.state_dict(), {"_class_name": cls_name, **config}


def make_family(family: Family, out: Path, packing_format: str = "auto_round:auto_gptq") -> None:
    """Write the family's tiny checkpoint with wna16's writer (4-bit, group 32, sym, auto-round's layout)."""
    from wna16.checkpoint.write import quantization_config, write_checkpoint

    qc = quantization_config(bits=4, group_size=32, sym=True, packing_format=packing_format,
                             block_name_to_quantize=family.blocks)  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    if family.diffusers:
        for i, component in enumerate(family.components):
            state, config = _diffusers_state(family.diffusers, seed=i)
            write_checkpoint(out / component, state, qc, model_config=config)
        index = {"_class_name": "WanPipeline" if family.name == "wan2_2" else "QwenImagePipeline"}
        index.update({c: ["diffusers", family.diffusers] for c in family.components})
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return
    state = _llama_state(family.lm_prefix, seed=1)
    gen = torch.Generator().manual_seed(2)
    for name in family.extra_16bit:
        state[name] = torch.randn(LLAMA["hidden_size"], LLAMA["hidden_size"], generator=gen)
    config = {**family.config, "wna16_tiny_llama": LLAMA, "vocab_size": VOCAB}
    write_checkpoint(out, state, qc, model_config=config)


def make_ct_writer(out: Path) -> None:
    """:data:`CT_WRITER` from the tiny LLaMA (seed 4)."""
    from wna16.checkpoint.write import compressed_tensors_config, write_checkpoint
    from wna16.scheme import Scheme

    model = tiny_llama(seed=4)
    groups = [(Scheme(8, -1, False), ["re:.*down_proj$"]), (Scheme(4, 32, False), ["Linear"])]
    if out.exists():
        shutil.rmtree(out)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    write_checkpoint(out, model.state_dict(), compressed_tensors_config(groups, ignore=["lm_head"]),
                     model_config=model.config.to_dict(), linears=linears)  # fmt: skip


ACT_ORDER = "act_order_w4g32_asym"


def act_order_g_idx(in_features: int, group_size: int, seed: int) -> torch.Tensor:
    """GPTQ's desc_act grouping: rows visited in a random order, consecutive ``group_size`` visited rows per group."""
    perm = torch.randperm(in_features, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[perm] = (torch.arange(in_features) // group_size).to(torch.int32)
    return g_idx


def make_act_order(out: Path) -> None:
    """A tiny LLaMA with act order on every quantized layer, in ``auto_round:gptqmodel`` (v2 zeros, g_idx)."""
    from wna16.checkpoint.write import quantization_config, write_checkpoint

    model = tiny_llama(seed=3)
    qc = quantization_config(bits=4, group_size=32, sym=False, packing_format="auto_round:gptqmodel",
                             block_name_to_quantize=("model.layers",))  # fmt: skip
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.")}
    g_idx = {n: act_order_g_idx(m.in_features, 32, seed=i) for i, (n, m) in enumerate(sorted(linears.items()))}
    if out.exists():
        shutil.rmtree(out)
    write_checkpoint(out, model.state_dict(), qc, model_config=model.config.to_dict(), g_idx=g_idx)


EMBEDDED = Case("tiny-llama-w4g128-auto_round", "llama", "auto_round", 4, 128, True, "auto_round:auto_gptq", hidden=128)
"""The checkpoint committed under ``tests/checkpoints/embedded/`` (about 250 kB): the README's main command and the
core tests use it without auto-round; ``python make_checkpoints.py --embedded`` remakes it, and an interop test checks
that it is still what auto-round makes."""
EMBEDDED_DIR = Path(__file__).parent / "embedded"

MAKERS: dict[str, Callable[[Path], None]] = {
    **{name: (lambda out, c=case: make_case(c, out)) for name, case in CASES.items()},
    **{name: (lambda out, f=family: make_family(f, out)) for name, family in FAMILIES.items()},
    ACT_ORDER: make_act_order,
    **{name: (lambda out, c=case: make_case(c, out)) for name, case in {**LLMC_CASES, **LLMC_TWINS}.items()},
    CT_WRITER: make_ct_writer,
}


def make(root: Path, names: list[str] | None = None) -> dict[str, Any]:
    """Write every case (or ``names``) under ``root`` and ``root/MANIFEST.json``; return the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"made_by": "tests/checkpoints/make_checkpoints.py", "versions": versions(), "cases": {}}
    for name in names or list(MAKERS):
        out = root / name
        MAKERS[name](out)
        files = {str(p.relative_to(out)): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
        entry: dict[str, Any] = {"files": files, "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}
        case = CASES.get(name) or LLMC_CASES.get(name) or LLMC_TWINS.get(name)
        case = case or (EMBEDDED if name == EMBEDDED.name else None)
        if case is not None:
            entry["request"] = asdict(case)
        manifest["cases"][name] = entry
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def source_hash() -> str:
    """What the cache of made checkpoints is keyed on: this file, wna16's writer and quantizer, the tools' versions."""
    import wna16.checkpoint.write
    import wna16.quantize

    sources = [Path(__file__), Path(wna16.checkpoint.write.__file__), Path(wna16.quantize.__file__)]
    text = "".join(p.read_text() for p in sources) + json.dumps(versions(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


if __name__ == "__main__":  # auto-round's model-free mode spawns processes: keep the entry point guarded
    if sys.argv[1:] == ["--embedded"]:
        MAKERS[EMBEDDED.name] = lambda out: make_case(EMBEDDED, out)
        make(EMBEDDED_DIR, [EMBEDDED.name])
        sys.exit(0)
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} OUT [CASE ...] | --embedded; cases: {', '.join(MAKERS)}")
    result = make(Path(sys.argv[1]), sys.argv[2:] or None)
    for case_name, info in result["cases"].items():
        print(f"{case_name}: {info['bytes']} bytes")
