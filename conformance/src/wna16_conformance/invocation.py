"""The command line of one conformance suite run: built here and nowhere else.

``wna16 conform``, the nox sessions and the plugin guide's test all start the suite as a subprocess; they call
:func:`suite_command` so that an option added to the suite reaches every caller. Standard library only: the
noxfile loads this file without installing the distribution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def report_name(device: str, backend: str, variant: str = "") -> str:
    """The report file of a run: ``<device type>-<backend>[-<variant>].json`` (``cuda-marlin.json``,
    ``cpu-rocm-interpreter.json``); one spelling for every caller."""
    device_type = device.split(":", 1)[0]
    return f"{device_type}-{backend}" + (f"-{variant}" if variant else "") + ".json"


def suite_command(
    python: str,
    backend: str,
    *,
    device: str = "cpu",
    report: str | None = None,
    profile: str = "ci",
    max_dim: int | None = None,
    workers: int | str | None = None,
    filters: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """``python -m pytest ... --pyargs wna16_conformance --wna16-backend=BACKEND ...``: the suite against one backend.

    ``workers`` None runs without xdist's ``-n`` (pytest's default); ``extra`` is appended verbatim (``-k``,
    ``-x``, a session's posargs).
    """
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "wna16_conformance"]
    cmd += [f"--wna16-backend={backend}", f"--wna16-device={device}", f"--wna16-profile={profile}"]
    if report is not None:
        cmd.append(f"--wna16-report={report}")
    if max_dim is not None:
        cmd.append(f"--wna16-max-dim={max_dim}")
    cmd += [f"--wna16-filter={f}" for f in filters]
    if workers is not None:
        cmd += ["-n", str(workers)]
    return [*cmd, *extra]


def worker_env(workers: int | None) -> dict[str, str]:
    """The environment a suite run with ``workers`` xdist workers adds: ``OMP_NUM_THREADS``, an equal share of the
    cores per worker (nothing without xdist, or when the caller's environment already sets it).

    torch starts one thread per core in every worker: ``-n 2`` on two cores ran four spinning OpenMP threads and the
    ci profile took 90 s against the reference backend and 97 s against cpu, 33 s and 31 s with one thread per worker
    (2-core Zen4, AVX512-BF16). Set by the caller, not the plugin: a report is the same for any number of workers only
    at one thread count (BLAS sums in another order with other threads).
    """
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"OMP_NUM_THREADS": str(max(1, cores // workers))}
