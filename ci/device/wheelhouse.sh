#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the wheels the offline GPU machine lacks: jsonschema and its dependencies, for
# CPython 3.10-3.14 on manylinux x86_64 (the device's Python version is not known in advance). Run it on a machine
# with pip's index, then carry `.whl` to the device (`run` tool: carry [".whl"]); gpu_check.sh installs jsonschema
# from it. Without it the conformance reports are written unvalidated (and say so in the log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/.whl}"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
for version in 3.10 3.11 3.12 3.13 3.14; do
    "$PYTHON" -m pip download --disable-pip-version-check -q --only-binary=:all: --implementation cp \
        --python-version "$version" --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$DEST" jsonschema
done
du -sh "$DEST"
ls "$DEST"
