"""The whole prepare step of the Marlin backend in plain torch: canonical weight in, the kernel's tensors out.

It runs on whatever device the weight is on, so the CPU layout proofs exercise exactly the code a GPU runs. Beyond
the tile layouts of :mod:`wna16_marlin.layout` it owns three decisions the kernel leaves to its caller:

- **Padding.** The thread tiles need N % 64 and K % 128 (or N % 128 and K % 64); other shapes are zero-padded (codes,
  scales, zero points, bias) and the activations padded with zero columns, so padded rows contribute nothing and the
  padded output columns are cut off.
- **Act order.** The kernel applies one scale row to each run of ``group_size`` consecutive rows. Rows are therefore
  sorted by group (``g_idx``) and the activations gathered with the same permutation; a group with fewer rows than
  ``group_size`` (a tensor-parallel K-slice of an act-order layer, or a partial last group) is padded to a whole run
  with rows that read a zero activation, and a group with more rows takes several runs. Every run the kernel sees is
  then complete, which is what older kernels called ``is_k_full``.
- **Zero points.** Symmetric weights use the biased types (uint4b8 / uint8b128: the code minus 2**(bits-1), which is
  wna16's symmetric zero) and need no zero tensor; asymmetric 4-bit weights use uint4 with packed zero points, which
  holds zeros 0..15 only (a GPTQ-v1 zero of 16 is refused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wna16.errors import UnsupportedError
from wna16.groups import regroup_rows
from wna16.weight import QuantizedWeight
from wna16_marlin.layout import pack_zero_points, padded_nk, permute_bias, permute_scales, repack_weight


@dataclass(frozen=True)
class RowPlan:
    """Where each of the kernel's K rows comes from: ``source[r]`` is a row of the weight, or K (a zero row that reads
    a zero activation). ``group[s]`` is the scale row of run ``s`` of ``group_size`` rows (-1 for pure padding)."""

    source: torch.Tensor
    group: torch.Tensor
    identity_prefix: bool


def plan_rows(weight: QuantizedWeight, padded_k: int | None = None) -> RowPlan:
    """Sort the rows by group and cut them into complete runs of ``group_size`` (see module docstring).

    Without act order and with whole groups this is the identity followed by zero padding up to ``padded_k``.
    """
    k = weight.in_features
    rows = weight.scheme.group_rows(k)
    device = weight.qweight.device
    plan = regroup_rows(weight.group_index(), weight.num_groups, multiple=rows)  # runs of `rows` rows per group
    kernel_k = plan.kernel_rows if padded_k is None else padded_k
    if kernel_k < plan.kernel_rows:
        raise ValueError(f"padded_k={padded_k} is smaller than the {plan.kernel_rows} rows the plan needs")
    source = plan.source(kernel_k)
    run_group = torch.full((kernel_k // rows,), -1, dtype=torch.int64, device=device)
    run_group[: plan.kernel_rows // rows] = plan.block_groups(rows)
    return RowPlan(source, run_group, bool(torch.equal(source[:k], torch.arange(k, device=device))))


@dataclass(frozen=True)
class MarlinTensors:
    """What the GEMM reads, plus how to pad the activations and cut the output.

    ``qweight`` int32 [Kp/16, Np*16*bits/32]; ``scales`` [Gk, Np] in the activation dtype; ``zeros`` int32
    [Gk, Np*bits/32] (asymmetric only); ``bias`` [Np] permuted (when the layer adds one); ``input_index`` int64 [Kp]
    into the activations extended by one zero column (act order only; else the activations are zero-padded to Kp).
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bias: torch.Tensor | None
    input_index: torch.Tensor | None
    bits: int
    in_features: int
    out_features: int
    padded_in: int
    padded_out: int

    def gather_input(self, x2: torch.Tensor) -> torch.Tensor:
        """Activations [M, K] as the kernel reads them: [M, Kp], permuted for act order, zero-padded."""
        if self.input_index is not None:
            return torch.nn.functional.pad(x2, (0, 1)).index_select(1, self.input_index)
        if self.padded_in != self.in_features:
            return torch.nn.functional.pad(x2, (0, self.padded_in - self.in_features))
        return x2


def prepare_marlin(weight: QuantizedWeight, dtype: torch.dtype, bias: torch.Tensor | None = None) -> MarlinTensors:
    """Every tensor the Marlin GEMM needs for ``weight`` with ``dtype`` activations (fp16/bf16), on the weight's
    device. ``bias`` is the one to add (``None`` where this slice adds none)."""
    scheme, k, n = weight.scheme, weight.in_features, weight.out_features
    if scheme.bits not in (4, 8):
        raise UnsupportedError(f"{weight.name}: Marlin", [f"{scheme.bits}-bit codes (packs 4- and 8-bit)"])
    if not scheme.sym and int(weight.zeros.max()) > scheme.max_code:
        raise UnsupportedError(
            f"{weight.name}.zeros",
            [f"zero point {int(weight.zeros.max())} does not fit the {scheme.bits}-bit zero points Marlin packs"],
        )
    rows = scheme.group_rows(k)
    natural = plan_rows(weight)
    grouped = scheme.group_size != -1
    padded_n, padded_k = padded_nk(n, natural.source.numel(), rows if grouped else -1)
    plan = plan_rows(weight, padded_k)

    codes = weight.codes()
    extended = torch.cat([codes, torch.zeros(1, n, dtype=codes.dtype, device=codes.device)])
    kernel_codes = torch.nn.functional.pad(extended[plan.source], (0, padded_n - n))

    run_group = plan.group if grouped else torch.zeros(1, dtype=torch.int64, device=codes.device)
    valid = run_group >= 0
    picked = run_group.clamp(min=0)
    scales = torch.where(valid[:, None], weight.scales[picked].to(dtype), 0)
    scales = torch.nn.functional.pad(scales, (0, padded_n - n))
    zeros = None
    if not scheme.sym:
        kernel_zeros = torch.nn.functional.pad(torch.where(valid[:, None], weight.zeros[picked], 0), (0, padded_n - n))
        zeros = pack_zero_points(kernel_zeros, scheme.bits)

    kernel_bias = None
    if bias is not None:
        kernel_bias = permute_bias(torch.nn.functional.pad(bias.to(dtype), (0, padded_n - n)))

    # identity then padding: zero-padding the activations is enough; otherwise gather them through the plan
    input_index = None if plan.identity_prefix else plan.source
    return MarlinTensors(
        qweight=repack_weight(kernel_codes, scheme.bits),
        scales=permute_scales(scales),
        zeros=zeros,
        bias=kernel_bias,
        input_index=input_index,
        bits=scheme.bits,
        in_features=k,
        out_features=n,
        padded_in=padded_k,
        padded_out=padded_n,
    )
