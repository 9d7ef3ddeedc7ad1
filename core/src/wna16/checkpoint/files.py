"""Safe, lazy reading of safetensors checkpoints: one file, or shards listed in a ``*.safetensors.index.json``.

Why not ``torch.load`` or a library reader: a checkpoint is untrusted input. Only safetensors is read (never a pickle),
the header is parsed here (8-byte little-endian length, then JSON) and every tensor's byte range is checked against its
dtype, shape and the real file size *before* any data is touched, so a truncated file or a header that lies becomes a
:class:`CorruptFileError` naming file and tensor instead of a crash deep inside a kernel. Every file opened here (and
by the config reader) must be a regular file, checked before it is opened (:func:`open_regular`): a FIFO or a device
where a shard, an index or a config is expected is refused instead of blocking forever.

Shard names in an index are confined by what they *say* (relative, no ``..``, no absolute paths, no backslashes or
NULs), and the file they name must stay inside the checkpoint folder, except for the links the Hugging Face hub cache
makes: a snapshot (``<repo>/snapshots/<revision>/``) holds symlinks into ``<repo>/blobs/``, and those are accepted.

Ownership: :meth:`SafetensorsFolder.tensor` returns a tensor that owns its memory, read from the file with ``readinto``
(no memory map). A served layer therefore never depends on the file staying as it was: a checkpoint truncated or
rewritten after loading cannot fault (SIGBUS) or silently change a live layer. A file that changed between its header
read and a tensor read (other size, inode or modification time) is a :class:`CorruptFileError`; a short read is one
too. The cost, one copy from the page cache per tensor, is measured in ``ci/bench/bench_load.py``. Nothing is cached,
so a consumer that streams layers (materialise, repack, drop) holds one layer at a time, not the whole model.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from wna16.errors import CheckpointError, CorruptFileError, MissingShardError, UnsafePathError, Wna16Error

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


MAX_JSON_BYTES = 100 * 1024 * 1024
"""Largest index or config JSON read (an index of a trillion-parameter model is a few MB)."""

FileIdentity = tuple[int, int, int, int]
"""``(device, inode, size, mtime_ns)`` of a file: a change of any one means the file is not the one that was read."""


def identity(info: os.stat_result) -> FileIdentity:
    """The :data:`FileIdentity` of a ``stat`` result."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


@contextmanager
def open_regular(path: Path, error: type[Wna16Error] = CheckpointError) -> Iterator[tuple[IO[bytes], os.stat_result]]:
    """Open ``path`` for unbuffered binary reading only if it is a regular file: ``(handle, fstat result)``.

    The type is checked with ``stat`` before opening (opening a FIFO blocks until a writer comes), the open itself is
    non-blocking, and the open descriptor is checked again (same inode, still regular), so a file swapped for a FIFO or
    device between the two is refused too. Failures raise ``error`` naming the path.
    """
    try:
        before = os.stat(path)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(before.st_mode):
        raise error(f"{path}: is {_kind(before.st_mode)}; expected a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"{path}: cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise error(f"{path}: replaced while being opened (now {_kind(after.st_mode)})")
        yield handle, after


def _read_exact(handle: IO[bytes], buffer: memoryview) -> int:
    """Fill ``buffer`` from ``handle``; the number of bytes read (less only at end of file)."""
    done = 0
    while done < len(buffer):
        got = handle.readinto(buffer[done:])  # type: ignore[attr-defined]
        if not got:
            break
        done += got
    return done


def read_json(path: Path, error: type[Wna16Error] = CheckpointError) -> Any:
    """The JSON value of a regular file; ``error`` naming ``path`` for anything else (not a regular file, too large,
    unreadable, not UTF-8, not JSON, nested too deeply, numbers beyond Python's limits)."""
    with open_regular(path, error) as (handle, info):
        if info.st_size > MAX_JSON_BYTES:
            raise error(f"{path}: {info.st_size} bytes, more than the {MAX_JSON_BYTES}-byte limit for a JSON file")
        try:
            raw = handle.read(MAX_JSON_BYTES + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply to be a config, index or header") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise error(f"{path}: not valid JSON ({exc})") from None


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
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
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
    tensors, metadata, _ = _read_header(path)
    return tensors, metadata


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], FileIdentity]:
    with open_regular(path) as (handle, info):
        size = info.st_size
        try:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CorruptFileError(f"{path}: {size} bytes, too short for the 8-byte safetensors header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise CorruptFileError(
                    f"{path}: header length {length} exceeds the file ({size} bytes) or the {MAX_HEADER_BYTES}-byte "
                    "limit; truncated or not a safetensors file"
                )
            raw = bytearray(length)
            got = _read_exact(handle, memoryview(raw))
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc}") from exc
        if got != length:
            raise CorruptFileError(f"{path}: the file shrank while its {length}-byte header was read ({got} read)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CorruptFileError(f"{path}: header JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise CorruptFileError(f"{path}: header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: header is {type(header).__name__}, expected a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFileError(f"{path}: __metadata__ must map strings to strings")
    data_start = 8 + length
    tensors = {name: _parse_entry(path, name, entry, data_start) for name, entry in header.items()}
    previous: TensorInfo | None = None
    for tensor in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if tensor.end > size:
            raise CorruptFileError(
                f"{path}: tensor {tensor.name!r} ends at byte {tensor.end}, beyond the end of the file ({size} "
                "bytes): the file is truncated or its header lies"
            )
        if previous is not None and tensor.start < previous.end and tensor.nbytes and previous.nbytes:
            raise CorruptFileError(
                f"{path}: tensors {previous.name!r} [{previous.start}, {previous.end}) and {tensor.name!r} "
                f"[{tensor.start}, {tensor.end}) overlap: the header's data_offsets lie"
            )
        if tensor.nbytes:
            previous = tensor
    return tensors, metadata, identity(info)


def _hub_blobs(folder: Path) -> list[Path]:
    """The ``blobs`` folder of the Hugging Face hub cache repo whose snapshot holds ``folder``, if it is one.

    The cache is ``<repo>/blobs/<hash>`` plus ``<repo>/snapshots/<revision>/<file>`` symlinks into ``../../blobs``
    (deeper for files in subfolders); links from a snapshot into its own repo's blobs are the cache's, not an escape.
    """
    found = []
    for form in (folder.absolute(), folder.resolve()):
        for parent in form.parents:
            if parent.name == "snapshots" and form != parent and (parent.parent / "blobs").is_dir():
                found.append((parent.parent / "blobs").resolve())
                break
    return found


def _inside(folder: Path, shard: object, index: Path) -> Path:
    """Resolve a shard name from an index: the name itself must be a plain relative path (no ``..``, no empty or
    absolute parts, no backslash or NUL), and the file it reaches must lie inside ``folder`` or, for a hub cache
    snapshot, in the cache's blobs."""
    parts = shard.split("/") if isinstance(shard, str) else []
    if (
        not isinstance(shard, str)
        or not shard
        or os.path.isabs(shard)
        or "\\" in shard
        or "\0" in shard
        or any(part in ("", "..") for part in parts)
    ):
        raise UnsafePathError(f"{index}: shard name {shard!r} is not a relative path inside {folder}")
    candidate = folder / shard
    resolved = candidate.resolve()
    roots = [folder.resolve(), *_hub_blobs(folder)]
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise UnsafePathError(
            f"{index}: shard {shard!r} resolves to {resolved}, outside the checkpoint folder {roots[0]}"
        )
    return candidate


def _read_index(index: Path) -> dict[str, str]:
    data = read_json(index, CorruptFileError)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptFileError(f"{index}: expected an object with a 'weight_map' of tensor name -> shard file (string)")
    return weight_map


def weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None, Path | None]:
    """The safetensors files of a checkpoint folder, the index's weight map (if sharded) and the index path.

    Order of discovery: a known index name, any single ``*.safetensors.index.json``, a known single-file name, then
    every ``*.safetensors`` in the folder. An index's shard names are checked to stay inside the folder and to exist.
    """
    indexes = [folder / n for n in INDEX_NAMES if (folder / n).exists()]
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
                if not path.exists():
                    raise MissingShardError(f"{index}: shard {shard!r} (holding tensor {tensor!r}) does not exist")
                shards[shard] = path
        return sorted(shards.values()), weight_map, index
    # Non-regular files are kept here so that reading them says what they are instead of silently skipping them.
    singles = [folder / n for n in SINGLE_NAMES if (folder / n).exists()]
    files = singles or sorted(p for p in folder.glob("*.safetensors") if p.exists() and not p.is_dir())
    if not files:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        pickles = [n for n in found if n.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        hint = f" (pickle files {pickles} are never loaded)" if pickles else ""
        raise MissingShardError(f"{folder}: no *.safetensors weights found{hint}")
    return files, None, None


class SafetensorsFolder:
    """Every tensor of a checkpoint folder by name, read lazily.

    Construction reads and validates the headers only. :meth:`tensor` reads a tensor's bytes into memory it owns, after
    checking that its file is still the one whose header was read.
    """

    def __init__(self, folder: str | os.PathLike[str], progress: Progress | None = None) -> None:
        self.folder = Path(folder)
        files, weight_map, self.index = weight_files(self.folder)
        self.files: list[Path] = files
        self.metadata: dict[Path, dict[str, str]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._identity: dict[Path, FileIdentity] = {}
        for done, path in enumerate(files, 1):
            tensors, self.metadata[path], self._identity[path] = _read_header(path)
            for name, info in tensors.items():
                other = self.tensors.get(name)
                if other is not None:
                    raise CorruptFileError(f"tensor {name!r} is stored twice: in {other.file} and in {path}")
                self.tensors[name] = info
            if progress is not None:
                progress(done, len(files), path.name)
        if weight_map is not None:
            self._check_index(weight_map)

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
        """Tensor ``name``, read into memory of its own (nothing refers to the file afterwards).

        :class:`CorruptFileError` when the file changed since its header was read (size, inode or modification time)
        or ends before the tensor does.
        """
        info = self.info(name)
        out = torch.empty(info.nbytes, dtype=torch.uint8)
        with open_regular(info.file) as (handle, now):
            was = self._identity[info.file]
            if identity(now) != was:
                raise CorruptFileError(
                    f"{info.file}: changed since its header was read ({was[2]} -> {now.st_size} bytes, modified "
                    f"{'again' if now.st_mtime_ns != was[3] else 'in place'}); tensor {info.name!r} not read: "
                    "open the checkpoint again"
                )
            try:
                handle.seek(info.start)
                got = _read_exact(handle, out.numpy().data) if info.nbytes else 0
            except OSError as exc:
                raise CheckpointError(f"{info.file}: tensor {info.name!r}: cannot read: {exc}") from exc
        if got != info.nbytes:
            raise CorruptFileError(
                f"{info.file}: tensor {info.name!r} ends at byte {info.end}, but the file now ends at byte "
                f"{info.start + got}"
            )
        return out.view(info.dtype).reshape(info.shape)
