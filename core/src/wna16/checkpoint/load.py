"""``load_checkpoint``: a quantized safetensors checkpoint as per-layer schemes and lazily materialised weights.

Loading is all-or-nothing: the config is read, every shard header validated and the coverage audit run before a
:class:`Checkpoint` exists, so a caller either gets a checkpoint whose every layer can be materialised against its
scheme or one typed :class:`~wna16.errors.CheckpointError` listing what is wrong. Nothing but headers and the small
tensors the audit checks (``g_idx``, ``qzeros``, ``scales``, ``bias``) is read until a weight or tensor is asked for;
each request reads the bytes it needs into memory the caller owns (see :mod:`wna16.checkpoint.files`), so streaming
over the layers keeps memory near one layer, not one model, and a served layer never depends on the files.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from wna16.checkpoint.audit import AuditReport, CheckpointLayer, audit_tensors
from wna16.checkpoint.config import QuantConfig, read_model_config, read_quant_config
from wna16.checkpoint.files import Progress, SafetensorsFolder, TensorInfo
from wna16.checkpoint.presets import preset_for
from wna16.checkpoint.remap import Remap
from wna16.errors import CheckpointError, FormatError
from wna16.weight import QuantizedWeight


@dataclass(frozen=True)
class Sizes:
    """Bytes on disk against the same tensors in bf16 (16-bit float tensors counted at 2 bytes per element)."""

    disk_bytes: int
    bf16_bytes: int
    quantized_disk_bytes: int
    quantized_bf16_bytes: int

    @property
    def saved(self) -> float:
        """Fraction of the bf16 size saved on disk (0.62 for "62% smaller")."""
        return 1.0 - self.disk_bytes / self.bf16_bytes if self.bf16_bytes else 0.0


def _bf16_bytes(info: TensorInfo) -> int:
    return 2 * info.numel if info.dtype.is_floating_point else info.nbytes


class Checkpoint:
    """A loaded (audited) checkpoint. Weights and tensors are read from the shards on request and not cached: hold on
    to what you need, drop what you have repacked."""

    def __init__(
        self, path: Path, config: QuantConfig, remap: Remap, files: SafetensorsFolder, report: AuditReport
    ) -> None:
        self.path = path
        self.config = config
        self.remap = remap
        self.audit = report
        self._files = files
        self.layers: dict[str, CheckpointLayer] = report.layers
        self.unquantized: dict[str, TensorInfo] = report.unquantized
        quantized_disk = sum(layer.disk_bytes for layer in self.layers.values())
        quantized_bf16 = sum(layer.bf16_bytes for layer in self.layers.values())
        plain = self.unquantized.values()
        self.sizes = Sizes(
            files.disk_bytes, quantized_bf16 + sum(_bf16_bytes(i) for i in plain), quantized_disk, quantized_bf16
        )

    @property
    def files(self) -> list[Path]:
        """The safetensors files of the checkpoint."""
        return list(self._files.files)

    def layer(self, name: str) -> CheckpointLayer:
        """The quantized layer with runtime name ``name``."""
        try:
            return self.layers[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no quantized layer {name!r} ({len(self.layers)} layers)") from None

    def weight(self, name: str) -> QuantizedWeight:
        """The canonical weight of layer ``name``, read and converted from its packed layout."""
        layer = self.layer(name)
        # The audit read g_idx already: a trivial one (no act order) is not re-read and re-checked.
        skip = {"bias"} if layer.act_order else {"bias", "g_idx", "weight_g_idx"}
        tensors = {role: self._files.tensor(info.name) for role, info in layer.tensors.items() if role not in skip}
        try:
            return layer.packed_format.layout.unpack(
                tensors, layer.scheme, layer.in_features, layer.out_features, prefix=f"{layer.source}."
            )
        except FormatError as exc:
            files = ", ".join(p.name for p in layer.files)
            raise CheckpointError(f"{files}: layer {name!r}: {exc}") from exc

    def bias(self, name: str) -> torch.Tensor | None:
        """The bias of quantized layer ``name``, or None."""
        info = self.layer(name).tensors.get("bias")
        return None if info is None else self._files.tensor(info.name)

    def tensor(self, name: str) -> torch.Tensor:
        """A 16-bit (unquantized) tensor by runtime name."""
        info = self.unquantized.get(name)
        if info is None:
            raise CheckpointError(f"{self.path}: no unquantized tensor {name!r}")
        return self._files.tensor(info.name)

    def __repr__(self) -> str:
        return (
            f"Checkpoint({str(self.path)!r}, {len(self.layers)} quantized layers, {len(self.unquantized)} 16-bit "
            f"tensors, {self.sizes.disk_bytes / 1e9:.2f} GB on disk)"
        )


def _folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    return folder


def default_remap(path: str | os.PathLike[str], runtime: str = "vllm-omni") -> Remap:
    """The remap used when a caller passes none: the preset of the checkpoint's ``config.json`` for ``runtime``
    (:func:`~wna16.checkpoint.presets.preset_for`), identity without a ``config.json``. :func:`load_checkpoint`
    serves the vLLM-Omni runtime by default; :func:`~wna16.patch.patch_model` asks for ``"transformers"``, where
    the checkpoint's names are the model's (identity)."""
    folder = _folder(path)
    return preset_for(read_model_config(folder), runtime) if (folder / "config.json").is_file() else Remap.IDENTITY


def open_checkpoint(
    path: str | os.PathLike[str],
    remap: Remap | None = None,
    *,
    expected_modules: Mapping[str, tuple[int, int]] | Collection[str] | None = None,
    ignore: Iterable[str] = (),
    allow_unquantized: bool | Iterable[str] = False,
    progress: Progress | None = None,
) -> tuple[Checkpoint, AuditReport]:
    """Read and audit a checkpoint without raising on audit problems (for ``wna16 inspect``); file-level errors
    (unsafe or missing shards, corrupt headers, config errors) still raise. See :func:`load_checkpoint`."""
    folder = _folder(path)
    config = read_quant_config(folder)
    if remap is None:
        remap = default_remap(folder)
    runtime_config = config.remapped(remap)
    files = SafetensorsFolder(folder, progress)
    report = audit_tensors(
        files, runtime_config, remap.name,
        expected_modules=expected_modules, ignore=ignore, allow_unquantized=allow_unquantized,
    )  # fmt: skip
    return Checkpoint(folder, runtime_config, remap, files, report), report


def load_checkpoint(
    path: str | os.PathLike[str],
    remap: Remap | None = None,
    *,
    expected_modules: Mapping[str, tuple[int, int]] | Collection[str] | None = None,
    ignore: Iterable[str] = (),
    allow_unquantized: bool | Iterable[str] = False,
    progress: Progress | None = None,
) -> Checkpoint:
    """Load the checkpoint in folder ``path`` (``config.json`` + safetensors; a diffusers component folder works).

    ``remap`` maps checkpoint names to runtime names (default: :func:`default_remap`, the vLLM-Omni preset chosen
    from the config's architecture, identity for plain transformers/diffusers models). ``expected_modules``: the
    runtime's linear modules (names, or names -> ``(in_features, out_features)``) to audit coverage against.
    Opt-outs: ``ignore`` (tensor-name regexes dropped before the audit), ``allow_unquantized`` (module regexes, or
    True, accepted as 16-bit although the config quantizes them). Raises :class:`~wna16.errors.CheckpointAuditError`
    with every problem, or another
    :class:`~wna16.errors.CheckpointError` / :class:`~wna16.errors.ConfigError` for unreadable input.
    """
    checkpoint, report = open_checkpoint(
        path, remap, expected_modules=expected_modules, ignore=ignore, allow_unquantized=allow_unquantized,
        progress=progress,
    )  # fmt: skip
    report.raise_for_problems()
    return checkpoint
