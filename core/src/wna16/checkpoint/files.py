"""Safe, lazy reading of safetensors checkpoints: one file, or shards listed in a ``*.safetensors.index.json``.

Why not ``torch.load`` or a library reader: a checkpoint is untrusted input. Only safetensors is read (never a pickle),
the header is parsed here (8-byte little-endian length, then JSON) and every tensor's byte range is checked against its
dtype, shape and the real file size *before* any data is touched, so a truncated file or a header that lies becomes a
:class:`CorruptFileError` naming file and tensor instead of a crash (or a SIGBUS) deep inside a kernel. Shard names in
an index must stay inside the checkpoint folder (no ``..``, no absolute paths, no symlink escapes).

Data is memory-mapped, one private (copy-on-write) map per shard, and handed out as zero-copy tensors. The map is held
only by the tensors that use it (a weak cache), so a consumer that streams layers (materialise, repack, drop) keeps only
the pages of the layers it holds resident instead of the whole model.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from wna16.errors import CheckpointError, CorruptFileError, MissingShardError, UnsafePathError

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""Safetensors' own limit on the JSON header: larger is a corrupt or hostile file."""

DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
"""Safetensors dtype names -> torch dtypes (the subset torch can represent)."""

INDEX_NAMES: tuple[str, ...] = ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json")
SINGLE_NAMES: tuple[str, ...] = ("model.safetensors", "diffusion_pytorch_model.safetensors")

Progress = Callable[[int, int, str], None]
"""Called as ``progress(done, total, file_name)`` after each shard header is read."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range ``[start, end)`` in the file."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes the tensor occupies on disk."""
        return self.end - self.start

    @property
    def numel(self) -> int:
        """Number of elements."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def describe(self) -> str:
        """``dtype[shape]`` for messages."""
        return f"{str(self.dtype).removeprefix('torch.')}{list(self.shape)}"


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _parse_entry(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    where = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise CorruptFileError(f"{where}: header entry is {type(entry).__name__}, expected an object")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype_name not in DTYPES:
        raise CorruptFileError(f"{where}: dtype {dtype_name!r} is not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CorruptFileError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CorruptFileError(f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end")
    dtype = DTYPES[dtype_name]
    info = TensorInfo(name, path, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])
    want = info.numel * _element_size(dtype)
    if info.nbytes != want:
        raise CorruptFileError(
            f"{where}: data_offsets {offsets} span {info.nbytes} bytes, but {info.describe()} needs {want}"
        )
    return info


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate the header of one safetensors file: ``(tensors by name, __metadata__)``.

    Checks the length prefix, the JSON, each entry's dtype/shape/offsets, that each byte range matches its dtype and
    shape, that no two ranges overlap, and that every range lies inside the file.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CorruptFileError(f"{path}: {size} bytes, too short for the 8-byte safetensors header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise CorruptFileError(
                    f"{path}: header length {length} exceeds the file ({size} bytes) or the {MAX_HEADER_BYTES}-byte "
                    "limit; truncated or not a safetensors file"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path}: header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: header is {type(header).__name__}, expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + length
    tensors = {name: _parse_entry(path, name, entry, data_start) for name, entry in header.items()}
    previous: TensorInfo | None = None
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.end > size:
            raise CorruptFileError(
                f"{path}: tensor {info.name!r} ends at byte {info.end}, beyond the end of the file ({size} bytes): "
                "the file is truncated or its header lies"
            )
        if previous is not None and info.start < previous.end and info.nbytes and previous.nbytes:
            raise CorruptFileError(
                f"{path}: tensors {previous.name!r} [{previous.start}, {previous.end}) and {info.name!r} "
                f"[{info.start}, {info.end}) overlap: the header's data_offsets lie"
            )
        if info.nbytes:
            previous = info
    return tensors, metadata


def _inside(folder: Path, shard: str, index: Path) -> Path:
    """Resolve a shard name from an index, refusing names that leave ``folder``."""
    if not isinstance(shard, str) or not shard or os.path.isabs(shard) or "\\" in shard or "\0" in shard:
        raise UnsafePathError(f"{index}: shard name {shard!r} is not a relative path inside {folder}")
    candidate = folder / shard
    root = folder.resolve()
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise UnsafePathError(f"{index}: shard {shard!r} resolves to {resolved}, outside the checkpoint folder {root}")
    return candidate


def _read_index(index: Path) -> dict[str, str]:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{index}: not a readable JSON index: {exc}") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise CorruptFileError(f"{index}: expected an object with a 'weight_map' of tensor name -> shard file")
    return weight_map


def weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """The safetensors files of a checkpoint folder, the index's weight map (if sharded) and the index path.

    Order of discovery: a known index name, any single ``*.safetensors.index.json``, a known single-file name, then
    every ``*.safetensors`` in the folder. An index's shard names are checked to stay inside the folder and to exist.
    """
    indexes = [folder / n for n in INDEX_NAMES if (folder / n).is_file()]
    indexes = indexes or sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"{folder}: several safetensors indexes {[p.name for p in indexes]}; expected one")
    if indexes:
        index = indexes[0]
        weight_map = _read_index(index)
        shards: dict[str, Path] = {}
        for tensor, shard in weight_map.items():
            if shard not in shards:
                path = _inside(folder, shard, index)
                if not path.is_file():
                    raise MissingShardError(f"{index}: shard {shard!r} (holding tensor {tensor!r}) does not exist")
                shards[shard] = path
        return sorted(shards.values()), weight_map, index
    singles = [folder / n for n in SINGLE_NAMES if (folder / n).is_file()]
    files = singles or sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        pickles = [n for n in found if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (pickle files {pickles} are never loaded)" if pickles else ""
        raise MissingShardError(f"{folder}: no *.safetensors weights found{hint}")
    return files, None, None


class _MapCache:
    """One read-only view of each file, shared by the tensors that use it and unmapped when the last one dies."""

    def __init__(self) -> None:
        self._maps: dict[Path, weakref.ref[mmap.mmap]] = {}

    def get(self, info: TensorInfo) -> mmap.mmap:
        ref = self._maps.get(info.file)
        mapped = ref() if ref is not None else None
        if mapped is None:
            try:
                with info.file.open("rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    if info.end > size:  # the file shrank after its header was validated: never fault on it
                        raise CorruptFileError(
                            f"{info.file}: tensor {info.name!r} ends at byte {info.end}, but the file now has {size}"
                        )
                    # ACCESS_COPY: a writable private view, so torch.frombuffer needs no copy and the file is never
                    # written even if a caller writes to a tensor in place.
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            except OSError as exc:
                raise CheckpointError(f"{info.file}: cannot map: {exc}") from exc
            self._maps[info.file] = weakref.ref(mapped)
        return mapped


MADV_POPULATE_READ = 22
"""Linux >= 5.14: map a range's pages in one call instead of one fault per page (Python names no constant for it)."""

PREFETCH_MIN_BYTES = 1 << 20


def _prefetch(mapped: mmap.mmap, info: TensorInfo) -> None:
    """Ask the kernel for a large tensor's pages up front: the caller is about to read all of them."""
    if info.nbytes < PREFETCH_MIN_BYTES:
        return
    start = info.start - info.start % mmap.PAGESIZE
    for advice in (MADV_POPULATE_READ, mmap.MADV_WILLNEED):
        try:
            mapped.madvise(advice, start, info.end - start)
            return
        except OSError:  # older kernels refuse POPULATE_READ (EINVAL); the hint is optional
            continue


class SafetensorsFolder:
    """Every tensor of a checkpoint folder by name, read lazily from memory maps.

    Construction reads and validates the headers only. :meth:`tensor` maps a tensor's bytes on first use.
    """

    def __init__(self, folder: str | os.PathLike[str], progress: Progress | None = None) -> None:
        self.folder = Path(folder)
        files, weight_map, self.index = weight_files(self.folder)
        self.files: list[Path] = files
        self.metadata: dict[Path, dict[str, str]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        for done, path in enumerate(files, 1):
            tensors, self.metadata[path] = read_header(path)
            for name, info in tensors.items():
                other = self.tensors.get(name)
                if other is not None:
                    raise CorruptFileError(f"tensor {name!r} is stored twice: in {other.file} and in {path}")
                self.tensors[name] = info
            if progress is not None:
                progress(done, len(files), path.name)
        if weight_map is not None:
            self._check_index(weight_map)
        self._maps = _MapCache()

    def _check_index(self, weight_map: dict[str, str]) -> None:
        resolved = {path: path.resolve() for path in self.files}
        for name, shard in weight_map.items():
            info = self.tensors.get(name)
            if info is None or resolved[info.file] != resolved.get(self.folder / shard):
                actual = "no shard" if info is None else str(info.file.name)
                raise CorruptFileError(
                    f"{self.index}: tensor {name!r} is listed in shard {shard!r}, but {actual} holds it"
                )

    @property
    def disk_bytes(self) -> int:
        """Total size of the weight files."""
        return sum(p.stat().st_size for p in self.files)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    def info(self, name: str) -> TensorInfo:
        """Where tensor ``name`` lives; :class:`CheckpointError` naming the folder if it is absent."""
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.folder}: no tensor {name!r} in {[p.name for p in self.files]}") from None

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, zero-copy over the file's memory map (copied only when its offset is misaligned)."""
        info = self.info(name)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        mapped = self._maps.get(info)
        _prefetch(mapped, info)
        size = _element_size(info.dtype)
        if info.start % size:
            raw = torch.frombuffer(mapped, dtype=torch.uint8, count=info.nbytes, offset=info.start)
            return raw.clone().view(info.dtype).reshape(info.shape)
        flat = torch.frombuffer(mapped, dtype=info.dtype, count=info.numel, offset=info.start)
        return flat.reshape(info.shape)
