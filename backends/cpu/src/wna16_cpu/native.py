"""The native kernel's toolchain: compile ``native.c`` (shipped with this package) with the system C compiler at
first use, cache the shared object per user, load it with :mod:`ctypes`.

Why compiled here and not shipped: the kernel is built with ``-march=native`` so that one source serves whatever
this CPU has (AVX512-BF16 intrinsics where the compiler defines ``__AVX512BF16__``, plain vectorised C elsewhere);
no torch headers are involved, so a build takes about a second. The cache key is a hash of the source, the flags, the
compiler's version line and the CPU: a changed source, flag, compiler or CPU builds a new file, and a file whose
load fails (a corrupt or truncated cache entry) is rebuilt once. Builds write a temporary file and rename it into
place, so parallel test workers never load a half-written object.

Everything that can fail (no compiler, a failed build, a failed load) is caught and becomes :class:`Unavailable`'s
reason: the backend then keeps its torch paths (:mod:`wna16_cpu.backend`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from wna16_cpu import isa

FLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fPIC", "-shared", "-pthread", "-std=c11", "-D_GNU_SOURCE")
"""Compiler flags of the cached build (part of its cache key)."""

BUILD_TIMEOUT_S = 120
"""A build that takes longer than this (a wedged compiler) is abandoned, with the reason."""


class Unavailable(RuntimeError):
    """The native kernel cannot run here; the message says why (no compiler, the build's error, ...)."""


def compiler() -> str | None:
    """The C compiler to use: ``$CC``, else Python's own build compiler (``sysconfig``), else ``cc`` / ``gcc``."""
    for name in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if name:
            found = shutil.which(name.split()[0])
            if found:
                return found
    return None


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/wna16`` (``~/.cache/wna16`` by default): where built kernels live, per user."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "wna16"


def source() -> bytes:
    """The kernel's C source, as shipped in this package."""
    return resources.files("wna16_cpu").joinpath("native.c").read_bytes()


@dataclass(frozen=True)
class Library:
    """The loaded kernel: its path, whether the AVX512-BF16 path was compiled in, and the two entry points."""

    path: Path
    avx512bf16: bool
    linear: Callable[..., int]
    dequant: Callable[..., None]


def _signatures(lib: ctypes.CDLL) -> Library:
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    linear = lib.wna16_native_linear
    linear.restype = c_int
    linear.argtypes = [ptr, i64, i64, ptr, c_int, ptr, ptr, i64, i64, c_int, ptr, c_int]
    dequant = lib.wna16_native_dequant
    dequant.restype = None
    dequant.argtypes = [ptr, c_int, ptr, ptr, i64, i64, i64, i64, ptr, c_int]
    lib.wna16_native_isa.restype = c_int
    return Library(Path(lib._name), bool(lib.wna16_native_isa()), linear, dequant)


def _version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"{cc} --version failed: {e}") from e


def cached_path(cc: str, flags: tuple[str, ...], directory: Path | None = None) -> Path:
    """Where the build of ``native.c`` with compiler ``cc`` and ``flags`` is cached (in ``directory``, by default
    :func:`cache_dir`): the name is a hash of the source, the flags, the compiler's version line and the CPU
    (:func:`wna16_cpu.isa.cpu_identity`: ``-march=native`` code may not run on another CPU)."""
    parts = [source(), " ".join(flags).encode(), _version(cc).encode(), isa.cpu_identity().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:24]
    return (directory or cache_dir()) / f"native-{key}.so"


def build(flags: tuple[str, ...] = FLAGS, directory: Path | None = None) -> Library:
    """Load the kernel built with ``flags``, compiling it first when the cache (``directory``, by default
    :func:`cache_dir`) has no loadable copy; raises :class:`Unavailable` with the reason when there is no compiler
    or the build or load fails."""
    cc = compiler()
    if cc is None:
        raise Unavailable("no C compiler found ($CC, sysconfig CC, cc, gcc)")
    target = cached_path(cc, flags, directory)
    if target.exists():
        try:
            return _signatures(ctypes.CDLL(str(target)))
        except OSError:
            target.unlink(missing_ok=True)  # corrupt or truncated: rebuilt below
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            c_file, so_file = Path(tmp) / "native.c", Path(tmp) / "native.so"
            c_file.write_bytes(source())
            done = subprocess.run(
                [cc, *flags, "-o", str(so_file), str(c_file)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
            )
            if done.returncode != 0:
                raise Unavailable(f"{cc} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
            os.replace(so_file, target)  # atomic: a parallel build of the same key writes the same bytes
        return _signatures(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"building {target} with {cc}: {e}") from e


@functools.cache
def load() -> Library | Unavailable:
    """The kernel or the reason it is unavailable, decided once per process: a failing build (up to
    ``BUILD_TIMEOUT_S``) is not retried by every later rule, description or layer that asks."""
    try:
        return build()
    except Unavailable as e:
        return e


def library() -> Library:
    """The kernel for this process (built once, then read from the cache); raises :class:`Unavailable`."""
    loaded = load()
    if isinstance(loaded, Unavailable):
        raise Unavailable(str(loaded))  # a fresh error each time: the cached one keeps no traceback chain
    return loaded


def availability() -> tuple[bool, str]:
    """Whether the fast native path runs here, and why (or why not): the backend's rule needs the AVX512-BF16 path;
    the portable C path is built and correct everywhere but was never measured faster than torch's kernels."""
    try:
        lib = library()
    except Unavailable as e:
        return False, f"native kernel unavailable: {e}"
    if not lib.avx512bf16:
        return False, "native kernel built without AVX512-BF16 (this CPU or compiler lacks it): torch paths serve"
    return True, f"native kernel AVX512-BF16 ({lib.path.name})"
