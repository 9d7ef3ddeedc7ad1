"""The safetensors reader: headers parsed and validated by hand, lazily read tensors, index and path safety."""

from __future__ import annotations

import gc
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wna16.checkpoint.files import (
    CorruptFileError,
    MissingShardError,
    SafetensorsFolder,
    UnsafePathError,
    read_header,
    weight_files,
)
from wna16.errors import CheckpointError

TENSORS = {
    "a.qweight": torch.arange(48, dtype=torch.int32).reshape(4, 12),
    "a.scales": torch.linspace(-1, 1, 24).to(torch.float16).reshape(2, 12),
    "b.weight": torch.randn(3, 5).to(torch.bfloat16),
    "empty": torch.zeros(0, 4, dtype=torch.float32),
}


def _write_raw(path: Path, header: dict[str, object], data: bytes, pad_to: int = 8) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_to)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _header_of(path: Path) -> tuple[dict[str, dict[str, object]], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def test_single_file_round_trip(tmp_path: Path) -> None:
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    folder = SafetensorsFolder(tmp_path)
    assert set(folder) == set(TENSORS)
    for name, tensor in TENSORS.items():
        got = folder.tensor(name)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got, tensor)
    assert folder.disk_bytes == (tmp_path / "model.safetensors").stat().st_size


def test_tensors_own_their_memory_and_writes_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    before = path.read_bytes()
    folder = SafetensorsFolder(tmp_path)
    a, again = folder.tensor("a.qweight"), folder.tensor("a.qweight")
    assert a.data_ptr() != again.data_ptr()  # each read is a tensor of its own, not a view of the file
    a.add_(1)
    del a
    gc.collect()
    assert path.read_bytes() == before
    assert torch.equal(folder.tensor("a.qweight"), TENSORS["a.qweight"]) and torch.equal(again, TENSORS["a.qweight"])


def test_misaligned_offsets_are_copied_correctly(tmp_path: Path) -> None:
    values = torch.tensor([1, -2, 3, 2**31 - 1], dtype=torch.int32)
    header = {
        "pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "x": {"dtype": "I32", "shape": [4], "data_offsets": [1, 17]},
    }
    _write_raw(tmp_path / "model.safetensors", header, b"\x07" + values.numpy().tobytes(), pad_to=1)
    folder = SafetensorsFolder(tmp_path)
    assert torch.equal(folder.tensor("x"), values)


def test_sharded_with_index_and_progress(tmp_path: Path) -> None:
    save_file({"a.qweight": TENSORS["a.qweight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b.weight": TENSORS["b.weight"]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {
        "weight_map": {"a.qweight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    seen: list[tuple[int, int, str]] = []
    folder = SafetensorsFolder(tmp_path, progress=lambda d, t, n: seen.append((d, t, n)))
    assert folder.info("b.weight").file.name == "model-00002-of-00002.safetensors"
    assert torch.equal(folder.tensor("b.weight"), TENSORS["b.weight"])
    assert seen == [(1, 2, "model-00001-of-00002.safetensors"), (2, 2, "model-00002-of-00002.safetensors")]


def test_diffusers_names(tmp_path: Path) -> None:
    save_file({"x.weight": TENSORS["b.weight"]}, str(tmp_path / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    index = {"weight_map": {"x.weight": "diffusion_pytorch_model-00001-of-00001.safetensors"}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    files, _, found = weight_files(tmp_path)
    assert found is not None and found.name == "diffusion_pytorch_model.safetensors.index.json"
    assert [p.name for p in files] == ["diffusion_pytorch_model-00001-of-00001.safetensors"]
    other = tmp_path / "single"
    other.mkdir()
    save_file({"x.weight": TENSORS["b.weight"]}, str(other / "diffusion_pytorch_model.safetensors"))
    assert [p.name for p in weight_files(other)[0]] == ["diffusion_pytorch_model.safetensors"]


def test_truncated_file_names_file_and_tensor(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    header, _ = _header_of(path)
    last = max((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][1])  # type: ignore[index]
    with pytest.raises(CorruptFileError, match=rf"model\.safetensors: tensor '{last}' ends at byte .* beyond the end"):
        SafetensorsFolder(tmp_path)


def test_truncated_inside_header(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptFileError, match=r"model\.safetensors: header length \d+ exceeds the file"):
        read_header(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"dtype": "I32", "shape": [4, 12], "data_offsets": [0, 100]},
            r"'a\.qweight': data_offsets \[0, 100\] span 100 bytes, but int32\[4, 12\] needs 192",
        ),
        (
            {"dtype": "I32", "shape": [4, 12], "data_offsets": [192, 0]},
            r"'a\.qweight': data_offsets .* are not \[begin, end\]",
        ),
        ({"dtype": "Q4", "shape": [4, 12], "data_offsets": [0, 192]}, r"'a\.qweight': dtype 'Q4' is not one of"),
        ({"dtype": "I32", "shape": [4, -12], "data_offsets": [0, 192]}, r"'a\.qweight': shape .* is not a list"),
        ({"dtype": "I32", "shape": [4, 12], "data_offsets": [48, 240]}, r"tensors '(a\.qweight|a\.scales)' .* overlap"),
    ],
)
def test_lying_header_offsets(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"a.qweight": TENSORS["a.qweight"], "a.scales": TENSORS["a.scales"]}, str(path))
    header, data = _header_of(path)
    header["a.qweight"] = entry
    _write_raw(path, header, data)
    with pytest.raises(CorruptFileError, match=message) as info:
        SafetensorsFolder(tmp_path)
    assert str(path) in str(info.value)


def test_header_not_json(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff{[x" + b"\0" * 8)
    with pytest.raises(CorruptFileError, match="not valid UTF-8 JSON"):
        read_header(path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors"])
def test_index_pointing_outside_the_folder(tmp_path: Path, shard: str) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"w": TENSORS["b.weight"]}, str(tmp_path / "outside.safetensors"))  # exists, so only the path refuses it
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(UnsafePathError, match=r"model\.safetensors\.index\.json: shard .* outside|not a relative path"):
        SafetensorsFolder(folder)


def test_symlinked_shard_escaping_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file({"w": TENSORS["b.weight"]}, str(tmp_path / "outside.safetensors"))
    (folder / "model-1.safetensors").symlink_to(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    with pytest.raises(UnsafePathError, match="outside the checkpoint folder"):
        SafetensorsFolder(folder)


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    save_file({"a": TENSORS["b.weight"]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        MissingShardError,
        match=r"index\.json: shard 'model-00002-of-00002\.safetensors' \(holding tensor 'b'\) does not exist",
    ):
        SafetensorsFolder(tmp_path)


def test_index_disagreeing_with_the_shard(tmp_path: Path) -> None:
    save_file({"a": TENSORS["b.weight"]}, str(tmp_path / "model-00001-of-00001.safetensors"))
    weight_map = {"a": "model-00001-of-00001.safetensors", "ghost": "model-00001-of-00001.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        CorruptFileError,
        match=r"tensor 'ghost' is listed in shard 'model-00001-of-00001\.safetensors', but no shard holds it",
    ):
        SafetensorsFolder(tmp_path)


def test_duplicate_tensor_across_files(tmp_path: Path) -> None:
    save_file({"a": TENSORS["b.weight"]}, str(tmp_path / "x.safetensors"))
    save_file({"a": TENSORS["b.weight"]}, str(tmp_path / "y.safetensors"))
    with pytest.raises(
        CorruptFileError, match=r"tensor 'a' is stored twice: in .*x\.safetensors and in .*y\.safetensors"
    ):
        SafetensorsFolder(tmp_path)


def test_no_weights_and_pickles_are_never_loaded(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        MissingShardError,
        match=r"no \*\.safetensors weights found \(pickle files \['pytorch_model\.bin'\] are never loaded\)",
    ):
        SafetensorsFolder(tmp_path)


def test_file_shrinking_after_open_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    folder = SafetensorsFolder(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match=r"changed since its header was read \(542 -> 100 bytes"):
        folder.tensor("a.qweight")


def test_unknown_tensor_name(tmp_path: Path) -> None:
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no tensor 'nope'"):
        SafetensorsFolder(tmp_path).tensor("nope")
