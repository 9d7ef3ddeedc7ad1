"""List installed backends: distribution, availability on a device (or why not), priority and capabilities."""

from __future__ import annotations

import argparse
import json

import torch

from wna16.protocol import Backend, Capability
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


def _summary(rule: Capability) -> str:
    groups = "any" if rule.group_sizes is None else "/".join(str(g) for g in sorted(rule.group_sizes))
    zero = "+".join(z for z, ok in (("sym", rule.sym), ("asym", rule.asym)) if ok)
    dtypes = "/".join(n.replace("float", "fp").replace("bfp", "bf") for n in _names(rule.dtypes))
    extras = [x for x, ok in (("act-order", rule.act_order), ("k-slices", rule.k_slices)) if ok]
    head = f"[{rule.label}] " if rule.label else ""
    return (
        f"{head}w{','.join(map(str, sorted(rule.bits)))} g{groups} {zero} {dtypes} p{rule.priority} {' '.join(extras)}"
    )


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
            row["priority"] = max((c.priority for c in backend.capabilities), default=0)
            row["capabilities"] = [describe_capability(c) for c in backend.capabilities]
            row["summary"] = [_summary(c) for c in backend.capabilities]
        out.append(row)
    return out


def run(args: argparse.Namespace) -> int:
    """Print the table (or JSON); exit 0."""
    torch.device(args.device)  # validate early with torch's own message
    table = rows(args.device)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'backend':<14} {'distribution':<26} {'available on ' + args.device:<40} capabilities")
    for row in table:
        avail = "yes" if row["available"] else f"no: {row['reason']}"
        dist = f"{row['distribution']} {row['version']}"
        summaries = row.get("summary") or ["-"]
        assert isinstance(summaries, list)
        print(f"{row['name']:<14} {dist:<26} {avail[:40]:<40} {summaries[0]}")
        for extra in summaries[1:]:
            print(f"{'':<82} {extra}")
        if not row["available"] and len(str(avail)) > 40:
            print(f"{'':<42}   ({avail})")
    return 0
