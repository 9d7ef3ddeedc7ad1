"""List installed backends: distribution, availability on a device (or why not), priority and capabilities.

Listing asks each backend about ``--device`` only: capabilities a backend resolves lazily for other device types
(:class:`wna16.protocol.LazyCapabilities`: vLLM's Marlin for ``cuda``) are not resolved, and the row says on which
device they are; a backend that computes refusals beyond its rules (:meth:`wna16.protocol.Backend.refusals`) says
what it computes.
"""

from __future__ import annotations

import argparse
import json
import textwrap

import torch

from wna16.protocol import Backend, Capability, LazyCapabilities
from wna16.registry import default_registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``wna16 backends``."""
    parser.add_argument("--device", default="cpu", help="device to check availability on (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _names(values: object) -> list[str]:
    items = sorted(str(v).removeprefix("torch.") for v in values)  # type: ignore[attr-defined]
    return items


def describe_capability(rule: Capability) -> dict[str, object]:
    """A capability rule as plain JSON-able data."""
    return {
        "label": rule.label,
        "bits": sorted(rule.bits),
        "group_sizes": "any" if rule.group_sizes is None else sorted(rule.group_sizes),
        "partial_last_group": rule.partial_last_group,
        "sym": rule.sym,
        "asym": rule.asym,
        "dtypes": _names(rule.dtypes),
        "devices": "any" if rule.devices is None else sorted(rule.devices),
        "param_dtype": "activation" if rule.param_dtype is None else str(rule.param_dtype).removeprefix("torch."),
        "accum_dtype": str(rule.accum_dtype).removeprefix("torch."),
        "k_multiple": rule.k_multiple,
        "n_multiple": rule.n_multiple,
        "act_order": rule.act_order,
        "k_slices": rule.k_slices,
        "min_capability": rule.min_capability,
        "priority": rule.priority,
    }


def _short(dtype: object) -> str:
    return str(dtype).removeprefix("torch.").replace("bfloat", "bf").replace("float", "fp")


def _summary(rule: Capability) -> str:
    groups = "any" if rule.group_sizes is None else "/".join(str(g) for g in sorted(rule.group_sizes))
    zero = "+".join(z for z, ok in (("sym", rule.sym), ("asym", rule.asym)) if ok)
    dtypes = "/".join(_short(d) for d in sorted(rule.dtypes, key=str))
    param = "act" if rule.param_dtype is None else _short(rule.param_dtype)
    extras = [x for x, ok in (("act-order", rule.act_order), ("k-slices", rule.k_slices)) if ok]
    head = f"{rule.label}: " if rule.label else ""
    return (
        f"{head}w{','.join(map(str, sorted(rule.bits)))} g{groups} {zero} act {dtypes} param {param} "
        f"accum {_short(rule.accum_dtype)} p{rule.priority} {' '.join(extras)}"
    ).rstrip()


LEGEND = (
    "w: weight bits; g: group sizes (-1: one group per output row, i.e. per channel; any: every size); "
    "sym/asym: zero points served; act: activation dtypes; param: the dtype scales and the dequantized weight are "
    "rounded to (act: the activation's), accum: the accumulation dtype (both set the conformance error bound); "
    "p: priority (the registry picks the highest among the available backends that serve a layer; ties go to the "
    "name first in alphabetical order); act-order: serves g_idx (desc_act) layers; k-slices: serves tensor-parallel "
    "row slices"
)
"""The abbreviations of the capability column, printed under the table."""


def rows(device: str) -> list[dict[str, object]]:
    """One row per discovered backend."""
    out: list[dict[str, object]] = []
    registry = default_registry()
    for entry in registry.entries():
        backend: Backend | None = entry.backend
        row: dict[str, object] = {"name": entry.name, "distribution": entry.distribution, "version": entry.version}
        if backend is None:
            row.update(available=False, reason="failed to load: " + (entry.error or "").strip().splitlines()[-1])
            row.update(priority=None, capabilities=[])
        else:
            try:
                availability = backend.available(device)
                row.update(available=availability.ok, reason=availability.reason)
            except Exception as exc:  # a misbehaving plugin is listed with the fault, not a traceback of ours
                row.update(available=False, reason=registry.fault(entry.name, "available", exc))
            row.update(_declaration(backend, device))
        out.append(row)
    return out


def _declaration(backend: Backend, device: str) -> dict[str, object]:
    """The capability columns of a loaded backend, without resolving rules it resolves for another device type."""
    declared = backend.capability_declaration()
    kind = device.split(":", 1)[0]
    if isinstance(declared, LazyCapabilities) and not declared.resolved and kind not in declared.devices:
        devices = sorted(declared.devices)
        note = f"resolved on first use on {'/'.join(devices)} (wna16 backends --device {devices[0]})"
        return {"priority": None, "capabilities": [], "resolved_on": devices, "summary": [note]}
    rules = backend.capabilities
    summary = [_summary(c) for c in rules]
    row: dict[str, object] = {
        "priority": max((c.priority for c in rules), default=0),
        "capabilities": [describe_capability(c) for c in rules],
    }
    if type(backend).refusals is not Backend.refusals:
        doc = (type(backend).refusals.__doc__ or "").strip().split("\n\n", 1)[0]
        row["computed_refusals"] = " ".join(doc.split()) or "yes"
        summary.append(f"+ refusals computed in check: {row['computed_refusals']}")
    row["summary"] = summary
    return row


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); exit 0."""
    torch.device(args.device)  # validate early with torch's own message
    table = rows(args.device)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    width = max([len("backend"), *(len(str(r["name"])) for r in table)])
    dist_width = max([len("distribution"), *(len(f"{r['distribution']} {r['version']}") for r in table)])
    print(f"{'backend':<{width}}  {'distribution':<{dist_width}}  {'on ' + args.device:<8}  capabilities")
    for row in table:
        dist = f"{row['distribution']} {row['version']}"
        summaries = row.get("summary") or ["-"]
        assert isinstance(summaries, list)
        avail = "yes" if row["available"] else "no (1)"
        print(f"{row['name']!s:<{width}}  {dist:<{dist_width}}  {avail:<8}  {summaries[0]}")
        for extra in summaries[1:]:
            print(f"{'':<{width + dist_width + 14}}{extra}")
    missing = [row for row in table if not row["available"]]
    if missing:
        print(f"\n(1) not available on {args.device}:")
        for row in missing:
            print(f"  {row['name']}: {row['reason']}")
    print("\n" + textwrap.fill(f"legend: {LEGEND}", width=118, subsequent_indent="  "))
    return 0
