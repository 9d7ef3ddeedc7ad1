"""Inspect a quantized checkpoint: its config, every layer with the backend that would serve it, the audit, sizes.

Exit status: 0 when the coverage audit passes and every layer has a backend on the chosen device, 1 when the audit
finds problems (all are listed) or a layer has no backend there (a warning names them), 2 when the checkpoint cannot
be read at all (unsafe or missing shard, corrupt header, invalid config).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import TextIO

import torch

from wna16.checkpoint.audit import AuditReport, CheckpointLayer
from wna16.checkpoint.load import Checkpoint, open_checkpoint
from wna16.checkpoint.resolve import fused_groups, part_runs
from wna16.errors import NoBackendError, Wna16Error, layer_shape
from wna16.protocol import LayerSpec
from wna16.registry import Selection, select

PROGRESS_MIN_SHARDS = 4
"""Checkpoints with at least this many shards get a progress bar on stderr while their headers are read."""

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wna16 inspect``."""
    parser.add_argument("path", help="checkpoint folder (config.json + safetensors) or a diffusers component folder")
    parser.add_argument("--device", default="cpu", help="device to pick backends for (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="activation dtype (default: bf16)")
    parser.add_argument("--ignore", action="append", default=[], metavar="REGEX", help="drop matching tensors")
    parser.add_argument(
        "--allow-unquantized", action="append", default=[], metavar="REGEX",
        help="accept matching modules as 16-bit although the config quantizes them",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def progress_bar(stream: TextIO, width: int = 30) -> Callable[[int, int, str], None]:
    """A ``progress(done, total, name)`` callback drawing one self-overwriting line."""

    def draw(done: int, total: int, name: str) -> None:
        filled = width * done // max(total, 1)
        line = f"reading shard headers [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {name[-48:]}"
        stream.write("\r" + line.ljust(width + 80))
        if done == total:
            stream.write("\n")
        stream.flush()

    return draw


def human(size: float) -> str:
    """Bytes in decimal units, as checkpoint sizes are quoted (66 GB)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _spec(layer: CheckpointLayer, dtype: torch.dtype, device: str) -> LayerSpec:
    return LayerSpec(
        layer.in_features, layer.out_features, layer.scheme, dtype, layer.act_order, layer.has_bias, device
    )


def _choose(spec: LayerSpec) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(backend name or "none", other backends -> every reason why not)."""
    try:
        chosen: Selection = select(spec)
    except NoBackendError as exc:
        return "none", exc.by_backend
    return chosen.backend.name, dict(chosen.rejected)


def layer_rows(report: AuditReport, dtype: torch.dtype, device: str) -> list[dict[str, object]]:
    """One row per quantized layer, with the serving backend and why each other backend would not serve it."""
    cache: dict[LayerSpec, tuple[str, dict[str, tuple[str, ...]]]] = {}
    rows: list[dict[str, object]] = []
    for name, layer in sorted(report.layers.items()):
        spec = _spec(layer, dtype, device)
        if spec not in cache:
            cache[spec] = _choose(spec)
        backend, rejected = cache[spec]
        s = layer.scheme
        rows.append(
            {
                "name": name, "source": layer.source, "bits": s.bits, "group_size": s.group_size, "sym": s.sym,
                "scheme": str(s), "layout": layer.packed_format, "act_order": layer.act_order,
                "in_features": layer.in_features, "out_features": layer.out_features, "bias": layer.has_bias,
                "backend": backend, "rejected": {k: list(v) for k, v in rejected.items()},
            }
        )  # fmt: skip
    return rows


def mixed_fused_rows(checkpoint: Checkpoint, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per module a runtime fuses (vLLM's ``qkv_proj`` / ``gate_up_proj``) whose stored parts disagree: each
    part's scheme (or 16-bit) and backend, and the runs of parts that share one kernel call."""
    by_name = {str(r["name"]): r for r in rows}
    weights16 = [n.removesuffix(".weight") for n in checkpoint.unquantized if n.endswith(".weight")]
    out: list[dict[str, object]] = []
    for module, parts in fused_groups([*checkpoint.layers, *weights16]).items():
        runs = part_runs([checkpoint.layers[p].layer_quant if p in checkpoint.layers else None for p in parts])
        if len(runs) == 1:
            continue
        described = [
            {"name": p, "scheme": str(by_name[p]["scheme"]), "backend": by_name[p]["backend"]}
            if p in by_name
            else {"name": p, "scheme": "16-bit", "backend": "16-bit matmul"}
            for p in parts
        ]
        out.append({"name": module, "parts": described, "runs": [[parts[i] for i in run] for run in runs]})
    return out


def summary(checkpoint: Checkpoint) -> dict[str, object]:
    """The config, remap and sizes as plain data."""
    c, sizes = checkpoint.config, checkpoint.sizes
    return {
        "path": str(checkpoint.path),
        "files": [p.name for p in checkpoint.files],
        "method": c.method,
        "packed_format": c.packed_format,
        "default_scheme": str(c.default_scheme) if c.default_scheme is not None else "unquantized",
        "act_order": c.act_order,
        "block_prefixes": list(c.block_prefixes),
        "extra_config_keys": len(c.extra_config),
        "modules_to_not_convert": list(c.modules_to_not_convert),
        "config_groups": sorted({r.group for r in c.targets}),
        "ignore": [t.text for t in c.ignore],
        "remap": checkpoint.remap.label,
        "quantized_layers": len(checkpoint.layers),
        "unquantized_tensors": len(checkpoint.unquantized),
        "disk_bytes": sizes.disk_bytes,
        "bf16_bytes": sizes.bf16_bytes,
        "quantized_disk_bytes": sizes.quantized_disk_bytes,
        "quantized_bf16_bytes": sizes.quantized_bf16_bytes,
    }


def short_reason(reasons: list[str] | tuple[str, ...]) -> str:
    """The one reason a table prints for a rejected backend: the first (availability comes first, then the rules in
    declaration order), with a count of the others (``--json`` lists them all)."""
    if not reasons:
        return "no reason given"
    head = reasons[0].removeprefix("unavailable: ")
    return head + (f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else "")


def _print_tables(checkpoint: Checkpoint, rows: list[dict[str, object]], device: str, dtype: str) -> None:
    info = summary(checkpoint)
    files = info["files"]
    assert isinstance(files, list)
    print(f"checkpoint  {info['path']}  ({len(files)} safetensors file{'s' if len(files) != 1 else ''})")
    print(
        f"config      quant_method {info['method']}, packing {info['packed_format']}, default scheme "
        f"{info['default_scheme']}{' with act order' if info['act_order'] else ''}, quantized blocks "
        f"{info['block_prefixes'] or 'all'}, per-layer overrides (extra_config) {info['extra_config_keys']}, "
        f"modules_to_not_convert {info['modules_to_not_convert'] or '-'}, name remap {info['remap']}"
    )
    if info["config_groups"]:
        print(f"groups      config_groups {info['config_groups']}, ignore {info['ignore'] or '-'}")
    print(f"layers      {info['quantized_layers']} quantized, {info['unquantized_tensors']} 16-bit tensors")
    print()
    width = max([len("runtime name"), *(len(str(r["name"])) for r in rows)])
    lw = max([7, *(len(str(r["layout"])) for r in rows)])
    print(
        f"{'runtime name':<{width}}  bits  group size  zero point  {'packing':<{lw}}  act order  {'in -> out':<13}  "
        f"bias  "
        f"backend ({device}, {dtype})"
    )
    for r in rows:
        shape = layer_shape(int(str(r["in_features"])), int(str(r["out_features"])))
        print(
            f"{r['name']!s:<{width}}  {r['bits']!s:>4}  {r['group_size']!s:>10}  {'sym' if r['sym'] else 'asym':<10}  "
            f"{r['layout']!s:<{lw}}  {'yes' if r['act_order'] else 'no':<9}  {shape:<13}  "
            f"{'yes' if r['bias'] else 'no':<4}  {r['backend']}"
        )
    fused = mixed_fused_rows(checkpoint, rows)
    if fused:
        print("\nmixed fused modules (served run by run, each run one kernel call, outputs concatenated along N):")
        for f in fused:
            parts = f["parts"]
            assert isinstance(parts, list)
            described = " | ".join(f"{p['name'].rsplit('.', 1)[-1]} {p['scheme']} -> {p['backend']}" for p in parts)
            print(f"  {f['name']}: {described}")
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((r["scheme"], r["act_order"], r["in_features"], r["out_features"], r["bias"]), []).append(r)
    if any(r["rejected"] for r in rows):
        print("\nwhy not the other backends (the first reason of each; --json lists all):")
        for (scheme, act, k, n, bias), members in groups.items():
            rejected = members[0]["rejected"]
            assert isinstance(rejected, dict)
            if not rejected:
                continue
            extras = (" act-order" if act else "") + (" bias" if bias else "")
            shape = layer_shape(int(str(k)), int(str(n)))
            print(f"  {scheme} {shape}{extras} ({len(members)} layer(s), served by {members[0]['backend']}):")
            for backend, reasons in sorted(rejected.items()):
                print(f"    {backend}: {short_reason(reasons)}")


def _print_audit(report: AuditReport, checkpoint: Checkpoint) -> None:
    print()
    if report.ok:
        print("audit       OK: every quantized tensor belongs to a quantized layer and matches its scheme")
    else:
        print(f"audit       FAILED: {len(report.problems)} problem(s)")
        for problem in report.problems:
            print(f"  - {problem}")
    if report.ignored:
        print(f"            ignored by request: {len(report.ignored)} tensor(s)")
    if report.allowed_unquantized:
        print(f"            accepted as 16-bit by request: {', '.join(report.allowed_unquantized)}")
    s = checkpoint.sizes
    saved = f"{100 * s.saved:.0f}% smaller" if s.bf16_bytes else "-"
    q_saved = 1 - s.quantized_disk_bytes / s.quantized_bf16_bytes if s.quantized_bf16_bytes else 0.0
    print(
        f"size        {human(s.disk_bytes)} on disk vs {human(s.bf16_bytes)} in bf16 ({saved}); quantized layers "
        f"{human(s.quantized_disk_bytes)} vs {human(s.quantized_bf16_bytes)} ({100 * q_saved:.0f}% smaller)"
    )


def run(args: argparse.Namespace) -> int:
    """Print the inspection; exit 0 (audit OK), 1 (audit problems) or 2 (unreadable checkpoint)."""
    torch.device(args.device)
    bar = progress_bar(sys.stderr)

    def progress(done: int, total: int, name: str) -> None:
        if total >= PROGRESS_MIN_SHARDS:
            bar(done, total, name)

    try:
        checkpoint, report = open_checkpoint(
            args.path, ignore=args.ignore, allow_unquantized=args.allow_unquantized, progress=progress
        )
    except Wna16Error as exc:
        print(f"wna16 inspect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    rows = layer_rows(report, DTYPES[args.dtype], args.device)
    if args.json:
        data = {
            **summary(checkpoint),
            "layers": rows,
            "mixed_fused": mixed_fused_rows(checkpoint, rows),
            "audit": {"ok": report.ok, "problems": [asdict(p) for p in report.problems]},
        }
        print(json.dumps(data, indent=2, default=str))
    else:
        _print_tables(checkpoint, rows, args.device, args.dtype)
        _print_audit(report, checkpoint)
    unserved = [str(r["name"]) for r in rows if r["backend"] == "none"]
    if unserved:
        shown = ", ".join(unserved[:5]) + (f" and {len(unserved) - 5} more" if len(unserved) > 5 else "")
        print(
            f"wna16 inspect: warning: {len(unserved)} layer(s) have no backend on {args.device} ({args.dtype}): "
            f"{shown}; see why above, or try another --device/--dtype",
            file=sys.stderr,
        )
    return 0 if report.ok and not unserved else 1
