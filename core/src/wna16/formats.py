"""On-disk packed layouts, one class each, with lossless conversion to and from :class:`QuantizedWeight`.

- :data:`GPTQ_V1`: AutoGPTQ and ``auto_round:auto_gptq``. ``qweight`` int32 [K*b/32, N] packed along K, ``qzeros``
  int32 [G, N*b/32] packed along N holding *zero - 1*, ``scales`` [G, N], ``g_idx`` int32 [K].
- :data:`GPTQ_V2`: native ``auto_round``, ``auto_round:gptqmodel`` and ``checkpoint_format: gptq_v2``: the same
  tensors with the zero stored as is.
- :data:`AWQ`: AutoAWQ gemm and ``auto_round:auto_awq``. 4-bit only; ``qweight`` int32 [K, N/8] and ``qzeros``
  int32 [G, N/8] packed along N, nibble p of a word holding column ``[0, 2, 4, 6, 1, 3, 5, 7][p]`` of its block of 8;
  zeros stored as is; no ``g_idx``.
- :data:`COMPRESSED_TENSORS`: compressed-tensors ``pack-quantized`` (llm-compressor, auto-round's ``llm_compressor``
  export). ``weight_packed`` int32 [N, K*b/32] packed along K (the same LSB-first bit stream as GPTQ, transposed),
  codes stored unsigned (the signed value plus ``2**(b-1)``); ``weight_scale`` [N, G]; ``weight_zero_point`` int32
  [ceil(N*b/32), G] packed along N, unsigned, asymmetric layers only; ``weight_shape`` int [2] = (N, K); optional
  ``weight_g_idx`` int32 [K] (``actorder: group``).

The v1 policy. A v1 writer stores ``zero - 1`` masked to ``bits`` bits, so a true zero of 0 cannot be written
(:class:`FormatError`), and a stored ``2**bits - 1`` is read as a true zero of ``2**bits``, as AutoGPTQ-era readers
(and auto-round's own modules) compute ``stored + 1`` without wrapping. The canonical weight keeps zeros unpacked so
that ``2**bits`` is representable; writing it to v2 or AWQ is a :class:`FormatError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import torch

from wna16.errors import FormatError, expect_tensor
from wna16.groups import groups_with_g_idx, stored_groups, trivial_g_idx
from wna16.packing import pack_cols, pack_rows, packed_rows, run_length, unpack_cols, unpack_rows
from wna16.scheme import Scheme
from wna16.weight import SCALE_DTYPES, QuantizedWeight

Tensors = Mapping[str, torch.Tensor]


class PackingFormat(str, Enum):
    """The on-disk layouts by name, as values: configs, resolved layers, checkpoint layers and :class:`QuantLinear`
    carry one of these (never a bare string), and :attr:`layout` is the class that reads and writes it. A ``str``
    Enum, so it compares equal to its name and prints as it (``"gptq_v2"``) in reports and JSON."""

    GPTQ = "gptq"
    GPTQ_V2 = "gptq_v2"
    AWQ = "awq"
    COMPRESSED_TENSORS = "compressed-tensors"

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def of(cls, name: str) -> PackingFormat:
        """The format called ``name``, or :class:`FormatError` listing the known ones."""
        try:
            return cls(name)
        except ValueError:
            raise FormatError(f"packed format {name!r}: expected one of {sorted(f.value for f in cls)}") from None

    @property
    def layout(self) -> PackedFormat:
        """The layout object that converts this format to and from :class:`QuantizedWeight`."""
        return FORMATS[self]


AWQ_ORDER: tuple[int, ...] = (0, 2, 4, 6, 1, 3, 5, 7)
"""Nibble p of an AWQ word holds column ``AWQ_ORDER[p]`` of its block of 8 columns."""


def _get(tensors: Tensors, prefix: str, key: str) -> torch.Tensor:
    tensor = tensors.get(key)
    if tensor is None:
        raise FormatError(f"{prefix}{key}: missing (have {sorted(tensors)})")
    return tensor


@dataclass(frozen=True)
class GPTQFormat:
    """GPTQ packing; ``zero_offset`` is 1 for v1 (stored zero = zero - 1) and 0 for v2."""

    name: PackingFormat
    zero_offset: int

    def expected_shapes(self, scheme: Scheme, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors this layout stores for a layer (``g_idx`` optional on read)."""
        groups = len(stored_groups(scheme, in_features))
        return {
            "qweight": (packed_rows(in_features, scheme.bits, "qweight"), out_features),
            "qzeros": (groups, packed_rows(out_features, scheme.bits, "qzeros")),
            "scales": (groups, out_features),
            "g_idx": (in_features,),
        }

    def unpack(
        self, tensors: Tensors, scheme: Scheme, in_features: int, out_features: int, prefix: str = ""
    ) -> QuantizedWeight:
        """Read ``qweight``/``qzeros``/``scales``/optional ``g_idx`` into the canonical weight (qweight not copied)."""
        shapes = self.expected_shapes(scheme, in_features, out_features)
        qweight, qzeros, scales = (_get(tensors, prefix, k) for k in ("qweight", "qzeros", "scales"))
        g_idx = tensors.get("g_idx")
        groups = shapes["scales"][0]
        if g_idx is not None:
            expect_tensor(g_idx, f"{prefix}g_idx", shapes["g_idx"], (torch.int32, torch.int64))
            g_idx = g_idx.to(torch.int32)
            groups = groups_with_g_idx(groups, g_idx, int(scales.shape[0]) if scales.dim() == 2 else None)
        expect_tensor(qweight, f"{prefix}qweight", shapes["qweight"], (torch.int32,))
        expect_tensor(qzeros, f"{prefix}qzeros", (groups, shapes["qzeros"][1]), (torch.int32,))
        expect_tensor(scales, f"{prefix}scales", (groups, out_features), SCALE_DTYPES)
        zeros = self.unpack_zeros(qzeros, scheme, f"{prefix}qzeros")
        return QuantizedWeight(scheme, in_features, out_features, qweight, zeros, scales, g_idx, prefix + "weight")

    def unpack_zeros(self, qzeros: torch.Tensor, scheme: Scheme, what: str = "qzeros") -> torch.Tensor:
        """The true zero points [G, N] of a stored ``qzeros`` (packed along N; v1 adds its offset back)."""
        return unpack_cols(qzeros, scheme.bits, what) + self.zero_offset

    def pack(self, weight: QuantizedWeight) -> dict[str, torch.Tensor]:
        """Write the canonical weight in this layout; ``g_idx`` is always written (trivial without act order)."""
        stored = weight.zeros - self.zero_offset
        limit = (1 << weight.scheme.bits) - 1
        if stored.numel() and (int(stored.min()) < 0 or int(stored.max()) > limit):
            lo, hi = self.zero_offset, limit + self.zero_offset
            raise FormatError(
                f"{weight.name}.zeros: values in [{int(weight.zeros.min())}, {int(weight.zeros.max())}] cannot be "
                f"written as {self.name}, which stores true zeros in [{lo}, {hi}]"
            )
        g_idx = weight.g_idx if weight.g_idx is not None else trivial_g_idx(weight.in_features, weight.scheme)
        return {
            "qweight": weight.qweight,
            "qzeros": pack_cols(stored, weight.scheme.bits, f"{weight.name}.qzeros"),
            "scales": weight.scales,
            "g_idx": g_idx.to(torch.int32),
        }


@dataclass(frozen=True)
class AWQFormat:
    """AutoAWQ gemm packing: 4-bit codes and zeros packed along N with the [0,2,4,6,1,3,5,7] interleave."""

    name: PackingFormat = PackingFormat.AWQ

    @staticmethod
    def _check_scheme(scheme: Scheme, in_features: int, out_features: int, what: str) -> None:
        if scheme.bits != 4:
            raise FormatError(f"{what}: AWQ stores 4-bit codes only, got scheme {scheme} ({scheme.bits} bits)")
        if out_features % 8:
            raise FormatError(f"{what}: AWQ needs out_features % 8 == 0, got N={out_features}")
        if in_features % scheme.group_rows(in_features):
            raise FormatError(f"{what}: AWQ needs K % group_size == 0, got K={in_features}, group {scheme.group_size}")

    def expected_shapes(self, scheme: Scheme, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors this layout stores for a layer."""
        self._check_scheme(scheme, in_features, out_features, "awq")
        groups = len(stored_groups(scheme, in_features))
        return {
            "qweight": (in_features, out_features // 8),
            "qzeros": (groups, out_features // 8),
            "scales": (groups, out_features),
        }

    @staticmethod
    def _pack_n(values: torch.Tensor, what: str) -> torch.Tensor:
        rows, cols = values.shape
        interleaved = values.reshape(rows, cols // 8, 8)[:, :, list(AWQ_ORDER)].reshape(rows, cols)
        return pack_cols(interleaved, 4, what)

    @staticmethod
    def _unpack_n(packed: torch.Tensor, what: str) -> torch.Tensor:
        nibbles = unpack_cols(packed, 4, what)
        rows, cols = nibbles.shape
        out = torch.empty_like(nibbles).reshape(rows, cols // 8, 8)
        out[:, :, list(AWQ_ORDER)] = nibbles.reshape(rows, cols // 8, 8)
        return out.reshape(rows, cols)

    def unpack(
        self, tensors: Tensors, scheme: Scheme, in_features: int, out_features: int, prefix: str = ""
    ) -> QuantizedWeight:
        """Read ``qweight``/``qzeros``/``scales`` into the canonical weight (codes are repacked along K)."""
        shapes = self.expected_shapes(scheme, in_features, out_features)
        qweight, qzeros, scales = (_get(tensors, prefix, k) for k in ("qweight", "qzeros", "scales"))
        expect_tensor(qweight, f"{prefix}qweight", shapes["qweight"], (torch.int32,))
        expect_tensor(qzeros, f"{prefix}qzeros", shapes["qzeros"], (torch.int32,))
        expect_tensor(scales, f"{prefix}scales", shapes["scales"], SCALE_DTYPES)
        codes = self._unpack_n(qweight, f"{prefix}qweight")
        zeros = self.unpack_zeros(qzeros, scheme, f"{prefix}qzeros")
        packed = pack_rows(codes, 4, f"{prefix}qweight")
        return QuantizedWeight(scheme, in_features, out_features, packed, zeros, scales, None, prefix + "weight")

    def unpack_zeros(self, qzeros: torch.Tensor, scheme: Scheme, what: str = "qzeros") -> torch.Tensor:
        """The zero points [G, N] of a stored ``qzeros`` (4-bit, interleaved along N, stored as is)."""
        return self._unpack_n(qzeros, what)

    def pack(self, weight: QuantizedWeight) -> dict[str, torch.Tensor]:
        """Write the canonical weight as AWQ; act order and zeros of 16 cannot be expressed."""
        self._check_scheme(weight.scheme, weight.in_features, weight.out_features, weight.name)
        if weight.g_idx is not None:
            raise FormatError(f"{weight.name}.g_idx: AWQ has no act order, but the weight carries a non-trivial g_idx")
        if weight.zeros.numel() and int(weight.zeros.max()) > 15:
            raise FormatError(f"{weight.name}.zeros: a true zero of 16 cannot be written as AWQ (4-bit zeros)")
        return {
            "qweight": self._pack_n(unpack_rows(weight.qweight, 4), f"{weight.name}.qweight"),
            "qzeros": self._pack_n(weight.zeros, f"{weight.name}.qzeros"),
            "scales": weight.scales,
        }


def _pack_n(values: torch.Tensor, bits: int, what: str) -> torch.Tensor:
    """Pack [N, C] codes along N into int32 [ceil(N*b/32), C], the stream zero-padded to whole runs and cut to the
    words that hold codes (compressed-tensors' zero points for any N)."""
    rows = values.shape[0]
    run = run_length(bits)[0]
    padded = torch.zeros(-(-rows // run) * run, values.shape[1], dtype=torch.int64, device=values.device)
    padded[:rows] = values
    return pack_rows(padded, bits, what)[: -(-rows * bits // 32)].contiguous()


def _unpack_n(packed: torch.Tensor, rows: int, bits: int, what: str) -> torch.Tensor:
    """Inverse of :func:`_pack_n`: int32 [ceil(N*b/32), C] -> int32 codes [N, C]."""
    words = run_length(bits)[1]
    padded = torch.zeros(-(-packed.shape[0] // words) * words, packed.shape[1], dtype=torch.int32)
    padded[: packed.shape[0]] = packed
    return unpack_rows(padded, bits, what)[:rows]


@dataclass(frozen=True)
class CompressedTensorsFormat:
    """compressed-tensors ``pack-quantized``: codes packed along K per output row (the canonical ``qweight``
    transposed, word for word), scales and zeros [N, G].

    Symmetric layers store no zero point: their codes are ``2**(b-1)`` above the signed value, which is the
    canonical symmetric zero. Asymmetric zero points are stored unsigned (compressed-tensors' signed zero plus
    ``2**(b-1)``), so a true zero of ``2**b`` (GPTQ v1 only) cannot be written. ``weight_shape`` is checked against
    the layer, never trusted for sizes.
    """

    name: PackingFormat = PackingFormat.COMPRESSED_TENSORS
    roles: tuple[str, ...] = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")

    def expected_shapes(self, scheme: Scheme, in_features: int, out_features: int) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors this layout stores for a layer (``weight_zero_point`` asymmetric only,
        ``weight_g_idx`` with act order only)."""
        groups = len(stored_groups(scheme, in_features))
        return {
            "weight_packed": (out_features, packed_rows(in_features, scheme.bits, "weight_packed")),
            "weight_scale": (out_features, groups),
            "weight_zero_point": (-(-out_features * scheme.bits // 32), groups),
            "weight_shape": (2,),
            "weight_g_idx": (in_features,),
        }

    def unpack(
        self, tensors: Tensors, scheme: Scheme, in_features: int, out_features: int, prefix: str = ""
    ) -> QuantizedWeight:
        """Read the packed tensors into the canonical weight (packed words and scales transposed)."""
        k, n = in_features, out_features
        shapes = self.expected_shapes(scheme, k, n)
        packed, scale, shape = (_get(tensors, prefix, key) for key in ("weight_packed", "weight_scale", "weight_shape"))
        expect_tensor(shape, f"{prefix}weight_shape", shapes["weight_shape"], (torch.int64, torch.int32))
        if tuple(int(v) for v in shape.tolist()) != (n, k):
            raise FormatError(f"{prefix}weight_shape: holds {shape.tolist()}, expected [{n}, {k}] (N, K)")
        g_idx = tensors.get("weight_g_idx")
        groups = shapes["weight_scale"][1]
        if g_idx is not None:
            expect_tensor(g_idx, f"{prefix}weight_g_idx", shapes["weight_g_idx"], (torch.int32, torch.int64))
            g_idx = g_idx.to(torch.int32)
            groups = groups_with_g_idx(groups, g_idx, int(scale.shape[1]) if scale.dim() == 2 else None)
        expect_tensor(packed, f"{prefix}weight_packed", shapes["weight_packed"], (torch.int32,))
        expect_tensor(scale, f"{prefix}weight_scale", (n, groups), SCALE_DTYPES)
        zero_point = tensors.get("weight_zero_point")
        if zero_point is None:
            if not scheme.sym:
                raise FormatError(f"{prefix}weight_zero_point: missing; scheme {scheme} is asymmetric")
            zeros = torch.full((groups, n), scheme.center, dtype=torch.int32)
        else:
            expect_tensor(
                zero_point, f"{prefix}weight_zero_point", (shapes["weight_zero_point"][0], groups), (torch.int32,)
            )
            zeros = _unpack_n(zero_point, n, scheme.bits, f"{prefix}weight_zero_point").t().contiguous()
        qweight = packed.t().contiguous()  # the same bit stream along K: [K*b/32, N]
        return QuantizedWeight(scheme, k, n, qweight, zeros, scale.t().contiguous(), g_idx, prefix + "weight")

    def pack(self, weight: QuantizedWeight) -> dict[str, torch.Tensor]:
        """Write the canonical weight; ``weight_g_idx`` only with act order, ``weight_zero_point`` only asymmetric."""
        bits = weight.scheme.bits
        if weight.zeros.numel() and int(weight.zeros.max()) > (1 << bits) - 1:
            raise FormatError(
                f"{weight.name}.zeros: a true zero of {1 << bits} cannot be written as {self.name} "
                f"(zero points are {bits}-bit)"
            )
        tensors = {
            "weight_packed": weight.qweight.t().contiguous(),
            "weight_scale": weight.scales.t().contiguous(),
            "weight_shape": torch.tensor([weight.out_features, weight.in_features], dtype=torch.int64),
        }
        if not weight.scheme.sym:
            tensors["weight_zero_point"] = _pack_n(weight.zeros.t(), bits, f"{weight.name}.weight_zero_point")
        if weight.g_idx is not None:
            tensors["weight_g_idx"] = weight.g_idx.to(torch.int32)
        return tensors


PackedFormat = GPTQFormat | AWQFormat | CompressedTensorsFormat

GPTQ_V1 = GPTQFormat(PackingFormat.GPTQ, zero_offset=1)
GPTQ_V2 = GPTQFormat(PackingFormat.GPTQ_V2, zero_offset=0)
AWQ = AWQFormat()
COMPRESSED_TENSORS = CompressedTensorsFormat()

FORMATS: dict[str, PackedFormat] = {f.name: f for f in (GPTQ_V1, GPTQ_V2, AWQ, COMPRESSED_TENSORS)}
"""Layout objects by :class:`PackingFormat` (which, being a ``str`` Enum, also looks them up by plain name)."""


def get_format(name: str | PackingFormat) -> PackedFormat:
    """The layout called ``name`` (``gptq``, ``gptq_v2``, ``awq`` or ``compressed-tensors``, or the
    :class:`PackingFormat` itself)."""
    return PackingFormat.of(name).layout
