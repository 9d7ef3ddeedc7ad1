"""Hostile or unlucky checkpoints (issue 23): each test names the class of input it covers and fails without its fix.

Cases that could hang or kill the interpreter (FIFOs, catastrophic regexes, SIGBUS) run in a child process with a
timeout, so a regression fails the test instead of hanging or crashing the test run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ckpt_factory import Layer, layer_tensors, plain_tensors, quant_config, tiny_llama, write_checkpoint

from wna16 import Scheme
from wna16.checkpoint.audit import CheckpointAuditError
from wna16.checkpoint.config import read_quant_config
from wna16.checkpoint.files import CorruptFileError, SafetensorsFolder, UnsafePathError
from wna16.checkpoint.load import load_checkpoint, open_checkpoint
from wna16.errors import CheckpointError, ConfigError, Wna16Error

HERE = Path(__file__).parent


def _child(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (ckpt_factory importable); a hang becomes a test failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the child process hung for {timeout} s: {exc.stdout!r} {exc.stderr!r}")


# --- 1. the Hugging Face hub cache --------------------------------------------------------------------------------


def _hub_cache(root: Path, source: Path, subfolder: str = "") -> Path:
    """Lay out ``source``'s files as the hub cache does: content-addressed blobs, a snapshot of relative symlinks."""
    repo = root / "models--org--tiny"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    target = snapshot / subfolder if subfolder else snapshot
    target.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blobs / digest)
        (target / file.name).symlink_to(os.path.relpath(blobs / digest, target))
    return target


@pytest.mark.parametrize("subfolder", ["", "transformer"])
def test_hub_cache_snapshot_of_a_sharded_checkpoint_loads(tmp_path: Path, subfolder: str) -> None:
    source, weights, _ = tiny_llama(tmp_path / "src", shards=3)
    snapshot = _hub_cache(tmp_path / "hub", source, subfolder)
    assert all(p.is_symlink() for p in snapshot.iterdir())
    checkpoint = load_checkpoint(snapshot)
    name = "model.layers.1.mlp.down_proj"
    assert torch.equal(checkpoint.weight(name).qweight, weights[name].qweight)
    assert len(checkpoint.files) == 3


@pytest.mark.parametrize(
    "shard",
    [
        "../../blobs/{blob}",  # a '..' in the name, even one that lands in the cache's blobs
        "{blobs}/{blob}",  # an absolute name
        "sub/../model-00001-of-00002.safetensors",
        "sub//model-00001-of-00002.safetensors",
        "sub\\model-00001-of-00002.safetensors",
        "",
    ],
)
def test_hub_cache_index_names_stay_confined(tmp_path: Path, shard: str) -> None:
    source, _, _ = tiny_llama(tmp_path / "src", shards=2)
    snapshot = _hub_cache(tmp_path / "hub", source)
    blobs = snapshot.parent.parent / "blobs"
    link = snapshot / "model-00001-of-00002.safetensors"
    index = snapshot / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = shard.format(blob=os.readlink(link).rsplit("/", 1)[-1], blobs=blobs)
    data["weight_map"] = {k: name if v == link.name else v for k, v in data["weight_map"].items()}
    index.unlink()
    index.write_text(json.dumps(data))
    with pytest.raises(UnsafePathError, match="not a relative path inside"):
        SafetensorsFolder(snapshot)


def test_hub_cache_link_leaving_the_repo_is_refused(tmp_path: Path) -> None:
    source, _, _ = tiny_llama(tmp_path / "src", shards=2)
    snapshot = _hub_cache(tmp_path / "hub", source)
    other = tmp_path / "hub" / "models--evil--other" / "blobs"
    other.mkdir(parents=True)
    link = snapshot / "model-00002-of-00002.safetensors"
    shutil.copyfile(link, other / "x")
    link.unlink()
    link.symlink_to(os.path.relpath(other / "x", snapshot))
    with pytest.raises(UnsafePathError, match="outside the checkpoint folder"):
        SafetensorsFolder(snapshot)


# --- 2. a file changed under a live layer ---------------------------------------------------------------------------


def test_a_served_layer_survives_its_checkpoint_being_truncated_and_rewritten(tmp_path: Path) -> None:
    tiny_llama(tmp_path / "ckpt", shards=2)
    result = _child(
        f"""
        import time
        from pathlib import Path
        import torch
        from wna16.checkpoint.files import CorruptFileError
        from wna16.checkpoint.load import load_checkpoint
        from wna16.nn import QuantLinear

        folder = Path({str(tmp_path / "ckpt")!r})
        checkpoint = load_checkpoint(folder)
        name = "model.layers.0.mlp.up_proj"
        layer = QuantLinear(checkpoint.weight(name), dtype=torch.float32, backend="reference")
        x = torch.randn(3, layer.in_features)
        before = layer(x)
        shards = sorted(folder.glob("*.safetensors"))
        saved = {{p: p.read_bytes() for p in shards}}
        for p in shards:
            with p.open("r+b") as handle:
                handle.truncate(64)
        assert torch.equal(layer(x), before), "the served layer changed when its file was truncated"
        for other in ("model.layers.1.mlp.up_proj", "model.layers.0.self_attn.q_proj"):
            try:
                checkpoint.weight(other)
            except CorruptFileError as exc:
                print("truncated:", exc)
        time.sleep(0.05)  # a later modification time (the kernel's clock is coarser than mtime_ns)
        for p, data in saved.items():
            flipped = bytearray(data)
            flipped[-16:] = bytes(16)
            p.write_bytes(bytes(flipped))  # same size, same inode, other content
        assert torch.equal(layer(x), before), "the served layer changed when its file was rewritten"
        try:
            checkpoint.weight("model.layers.1.mlp.down_proj")
        except CorruptFileError as exc:
            print("rewritten:", exc)
        print("alive")
        """
    )
    assert result.returncode == 0, f"child died with {result.returncode} (SIGBUS is -7): {result.stderr[-2000:]}"
    lines = result.stdout.splitlines()
    assert lines[-1] == "alive"
    assert sum(line.startswith("truncated:") and "changed since its header was read" in line for line in lines) == 2
    assert any(line.startswith("rewritten:") and "modified again" in line for line in lines), lines


def test_a_shard_shrinking_after_its_header_is_read_is_a_typed_error(tmp_path: Path) -> None:
    folder, _, _ = tiny_llama(tmp_path / "ckpt")
    files = SafetensorsFolder(folder)
    path = files.files[0]
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(CorruptFileError, match=r"model\.safetensors: changed since its header was read"):
        for name in files:
            files.tensor(name)


def test_tensors_own_their_memory(tmp_path: Path) -> None:
    folder, _, _ = tiny_llama(tmp_path / "ckpt")
    files = SafetensorsFolder(folder)
    a = files.tensor("model.layers.0.mlp.up_proj.qweight")
    b = files.tensor("model.layers.0.mlp.up_proj.qweight")
    assert a.data_ptr() != b.data_ptr() and torch.equal(a, b)
    a.add_(1)
    assert not torch.equal(a, b)


# --- 3. regular expressions from a checkpoint ----------------------------------------------------------------------

CATASTROPHIC = r"^([\w.]|[\w.][\w.])*\d{5}$"
"""Backtracks exponentially in the length of a module name (``re`` never returns on 40 characters)."""


CONFIGS: dict[str, dict[str, object]] = {
    "extra_config key": quant_config(blocks="model", extra_config={CATASTROPHIC: {"bits": 8}}),
    "dynamic key": {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True, "desc_act": False,
                    "dynamic": {f"-:{CATASTROPHIC}": {}}},
    "modules_in_block_to_quantize entry": {"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True,
                                           "modules_in_block_to_quantize": [[CATASTROPHIC]]},
}  # fmt: skip


def test_catastrophic_regex_from_the_checkpoint_is_refused_in_bounded_time(tmp_path: Path) -> None:
    long = "model.language_model.layers.0.mlp"
    layers = [Layer(f"{long}.up_proj", 64, 128), Layer(f"{long}.down_proj", 128, 64)]
    tensors, _ = layer_tensors(layers, "gptq")
    for i, config in enumerate(CONFIGS.values()):
        write_checkpoint(tmp_path / str(i), tensors, config)
    result = _child(  # one interpreter for the three keys: imports cost more than the matching
        f"""
        import time
        from wna16.checkpoint.load import load_checkpoint
        from wna16.errors import PatternTimeoutError
        for i in range({len(CONFIGS)}):
            start = time.monotonic()
            try:
                load_checkpoint({str(tmp_path)!r} + f"/{{i}}")
            except PatternTimeoutError as exc:
                print(f"{{time.monotonic() - start:.2f}}", exc)
        """,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(CONFIGS), lines
    for key, line in zip(CONFIGS, lines, strict=True):
        seconds, message = line.split(" ", 1)
        assert key in message and repr(CATASTROPHIC) in message and "ran past its time limit" in message
        assert float(seconds) < 10


def test_ordinary_regex_keys_still_match(tmp_path: Path) -> None:
    qc = quant_config(extra_config={r"model\.layers\.0\.mlp\.(up|down)_proj": {"bits": 8}})
    config = read_quant_config(write_checkpoint(tmp_path, {}, qc))
    layer = config.resolve("model.layers.0.mlp.up_proj")
    assert layer is not None and layer.scheme.bits == 8


# --- 4. special files ----------------------------------------------------------------------------------------------


FIFO_PLACES = ("model.safetensors.index.json", "x.safetensors.index.json", "config.json", "model.safetensors",
               "model-00002-of-00002.safetensors", "quantization_config.json")  # fmt: skip


def test_a_fifo_where_a_file_is_expected_is_refused_not_waited_on(tmp_path: Path) -> None:
    folders = []
    for where in FIFO_PLACES:
        folder, _, _ = tiny_llama(tmp_path / where, shards=2 if where.startswith("model-0") else 1, blocks=1)
        if where == "quantization_config.json":
            (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        (folder / where).unlink(missing_ok=True)
        os.mkfifo(folder / where)
        folders.append(str(folder))
    result = _child(
        f"""
        from wna16.checkpoint.load import load_checkpoint
        from wna16.errors import Wna16Error
        for folder in {folders!r}:
            try:
                load_checkpoint(folder)
            except Wna16Error as exc:
                print(type(exc).__name__, exc)
        """,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(FIFO_PLACES), lines
    for where, line in zip(FIFO_PLACES, lines, strict=True):
        assert f"{where}: is a FIFO; expected a regular file" in line, line


def test_a_device_named_as_a_shard_is_refused(tmp_path: Path) -> None:
    folder, _, _ = tiny_llama(tmp_path / "ckpt", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    (folder / "model-00002-of-00002.safetensors").symlink_to("/dev/zero")
    # /dev/zero lies outside the folder: refused by confinement before its type is even looked at.
    with pytest.raises(UnsafePathError):
        SafetensorsFolder(folder)
    (folder / "model.safetensors").symlink_to("/dev/zero")
    (folder / "model-00002-of-00002.safetensors").unlink()
    (folder / "model.safetensors.index.json").unlink()
    (folder / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="is a character device; expected a regular file"):
        SafetensorsFolder(folder)


# --- 5. deeply nested or oddly typed JSON -------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("where", ["config.json", "model.safetensors.index.json", "header"])
def test_deeply_nested_json_is_a_typed_error_naming_the_file(tmp_path: Path, where: str) -> None:
    folder, _, _ = tiny_llama(tmp_path / "ckpt", shards=2 if where != "header" else 1)
    if where == "header":
        text = ('{"x": ' + DEEP + "}").encode()
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text)
    else:
        (folder / where).write_text('{"quantization_config": ' + DEEP + ', "weight_map": ' + DEEP + "}")
    with pytest.raises(Wna16Error, match=("model.safetensors" if where == "header" else where) + ".*nested too deep"):
        load_checkpoint(folder)


ODD_VALUES: list[object] = [None, True, 1.5, -1, "x", [], {}, [1, [2]], {"a": {"b": [None]}}, 10**300]


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_oddly_typed_safetensors_header_entries(tmp_path: Path, value: object) -> None:
    path = tmp_path / "model.safetensors"
    for field in ("dtype", "shape", "data_offsets", None):
        entry: object = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        if field is None:
            entry = value
        else:
            entry[field] = value  # type: ignore[index]
        text = json.dumps({"t": entry, "__metadata__": value if field is None else {}}).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(4))
        try:
            SafetensorsFolder(tmp_path)
        except CorruptFileError as exc:
            assert "model.safetensors" in str(exc)


@pytest.mark.parametrize("value", ODD_VALUES, ids=repr)
def test_oddly_typed_index_and_config_values(tmp_path: Path, value: object) -> None:
    folder, _, _ = tiny_llama(tmp_path / "ckpt", shards=2)
    index = folder / "model.safetensors.index.json"
    good_index, good_config = index.read_text(), (folder / "config.json").read_text()
    for key in ("weight_map", "metadata"):
        index.write_text(json.dumps({**json.loads(good_index), key: value}))
        try:
            SafetensorsFolder(folder)
        except CorruptFileError as exc:
            assert "index.json" in str(exc)
    index.write_text(json.dumps({"weight_map": {"model.norm.weight": value}}))
    with pytest.raises(CheckpointError, match="index.json"):
        SafetensorsFolder(folder)
    index.write_text(good_index)
    config = json.loads(good_config)
    keys = [*config["quantization_config"], "dynamic", "modules_in_block_to_quantize", "extra_config", "lm_head"]
    for key in keys:
        qc = {**config["quantization_config"], key: value}
        (folder / "config.json").write_text(json.dumps({**config, "quantization_config": qc}))
        try:
            open_checkpoint(folder)
        except Wna16Error as exc:
            assert "config.json" in str(exc) or "model.layers" in str(exc), exc
        qc = {**config["quantization_config"], "extra_config": {"model.layers.0.mlp.up_proj": {key: value}}}
        (folder / "config.json").write_text(json.dumps({**config, "quantization_config": qc}))
        try:
            open_checkpoint(folder)
        except Wna16Error as exc:
            assert "config.json" in str(exc) or "model.layers" in str(exc), exc


def test_integer_beyond_python_limits_is_a_typed_error(tmp_path: Path) -> None:
    folder, _, _ = tiny_llama(tmp_path / "ckpt")
    (folder / "config.json").write_text('{"quantization_config": {"bits": ' + "9" * 5000 + "}}")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        read_quant_config(folder)


# --- 6. audit gaps -------------------------------------------------------------------------------------------------


def test_nothing_quantized_is_a_problem(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, plain_tensors(), quant_config())
    with pytest.raises(CheckpointAuditError) as info:
        load_checkpoint(tmp_path)
    assert [p.kind for p in info.value.problems] == ["nothing-quantized"]
    assert "no quantized tensors (qweight/qzeros) among 5 tensor(s)" in str(info.value)


def test_every_value_gap_is_listed_at_once(tmp_path: Path) -> None:
    layers = [
        Layer("model.layers.0.mlp.up_proj", 64, 128, bias=True),
        Layer("model.layers.0.mlp.down_proj", 128, 64, bias=True),
        Layer("model.layers.1.mlp.up_proj", 64, 128),
        Layer("model.layers.1.mlp.down_proj", 128, 64, bias=True),
        Layer("model.layers.1.self_attn.q_proj", 64, 64),
    ]
    tensors, _ = layer_tensors(layers, "gptq")
    tensors["model.layers.0.mlp.up_proj.qzeros"] = torch.full_like(
        tensors["model.layers.0.mlp.up_proj.qzeros"], 0x55555555
    )
    tensors["model.layers.0.mlp.down_proj.scales"][1, 3] = float("nan")
    tensors["model.layers.1.mlp.down_proj.bias"][0] = float("inf")
    tensors["model.layers.1.mlp.up_proj.scales"][0, 0] = float("-inf")
    for role, tensor in list(tensors.items()):  # N = 0: every tensor of q_proj keeps its rows, loses its columns
        if role.startswith("model.layers.1.self_attn.q_proj.") and tensor.dim() == 2:
            tensors[role] = tensor[:, :0].contiguous()
    write_checkpoint(tmp_path, tensors, quant_config())
    with pytest.raises(CheckpointAuditError) as info:
        load_checkpoint(tmp_path)
    found = {(p.kind, p.module) for p in info.value.problems}
    assert found == {
        ("zeros", "model.layers.0.mlp.up_proj"),
        ("values", "model.layers.0.mlp.down_proj"),
        ("values", "model.layers.1.mlp.down_proj"),
        ("values", "model.layers.1.mlp.up_proj"),
        ("shape", "model.layers.1.self_attn.q_proj"),
    }, info.value.problems
    text = str(info.value)
    assert "symmetric but zeros lie in [6, 6], expected all 8" in text
    assert "1 non-finite value(s) (NaN or infinite) in float16[4, 64]" in text
    assert "zero-sized layer: (in, out) = (64, 0)" in text


def test_asymmetric_zeros_are_not_flagged(tmp_path: Path) -> None:
    scheme = Scheme(4, 32, False)
    layers = [Layer("model.layers.0.mlp.up_proj", 64, 128, scheme)]
    tensors, _ = layer_tensors(layers, "gptq")
    write_checkpoint(tmp_path, tensors, quant_config(scheme))
    assert list(load_checkpoint(tmp_path).layers) == ["model.layers.0.mlp.up_proj"]
