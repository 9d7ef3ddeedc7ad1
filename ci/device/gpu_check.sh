#!/usr/bin/env bash
# The one-shot GPU run: wna16 on a bare, offline NVIDIA machine, every step time-bounded, results under $OUT.
#
#   bash ci/device/gpu_check.sh [--out DIR] [--dry-run] [--budget SECONDS] [--install auto|pip|path] [--python PY]
#
# The machine has torch (CUDA), Triton, pytest, pytest-xdist, hypothesis, safetensors and setuptools, no network, no
# vLLM, no nox. The script
#   1. records the machine (device, torch/CUDA/Triton/Python versions, date: into summary.json);
#   2. installs core, backends/reference, backends/rocm, backends/cuda_marlin and conformance offline:
#      `pip install --no-deps --no-build-isolation --no-index -e ...` (every pyproject builds with setuptools, which is
#      there); if pip cannot (no `wheel` for an old setuptools, an externally managed Python, ...) it falls back to
#      writing their dist-info into a scratch folder on PYTHONPATH (gpu_check.py install-path; entry points work);
#      jsonschema (which the suite validates its reports with) is installed from a wheelhouse when one is given
#      (WNA16_WHEELHOUSE, default .whl/, made by ci/device/wheelhouse.sh); without it, reports are written unvalidated
#      (summary.json says so; validate them later with `gpu_check.py validate`);
#   3. runs the conformance suite (ci profile) on cuda:0 against `reference`, `rocm` (Triton) and `marlin` at the same
#      time (vLLM is absent: marlin must report itself unavailable with the reason; its computing cells are not run,
#      its refusals still are). The rocm run takes the heuristic launch configuration (WNA16_ROCM_AUTOTUNE=0): tuning
#      every drawn shape would compile hundreds of candidates; the benchmark tunes;
#   4. benchmarks the Triton backend against cuBLAS bf16 and the copy roofline (ci/bench/bench_triton.py), alone;
#   5. merges the reports with `wna16 matrix` and writes summary.json; exits non-zero on any problem.
# Output (flat, 8 files): conformance-{reference,rocm,marlin}-DEVICE.json, bench-triton-DEVICE.json, SUPPORT_MATRIX.md,
# support_matrix.html, summary.json (machine, steps, totals, benchmark, problems) and log.txt (every step's output).
#
# Every step has its own limit, cut further so that the sum stays within --budget (default 450 s; a killed step may
# overrun its limit by the 15 s grace between SIGINT and SIGKILL): a hang costs its step, not the run.
# --dry-run replaces the device by the CPU (Triton interpreter, three cells, tiny benchmark shapes)
# and runs every other line as on the GPU; the `gpu-check-dry-run` nox session runs it in CI so this cannot rot.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HELPER="$ROOT/ci/device/gpu_check.py"
OUT_DIR="${OUT:-}"
DRY_RUN=0
BUDGET=450
INSTALL=auto
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --install) INSTALL="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//' | head -n -1; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$OUT_DIR" ]; then echo "gpu_check: give --out DIR or set OUT" >&2; exit 2; fi
case "$INSTALL" in auto|pip|path) ;; *) echo "gpu_check: --install auto|pip|path" >&2; exit 2 ;; esac
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/wna16-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT_DIR/log.txt"
STEPS="$WORK/steps.tsv"
: > "$LOG"
: > "$STEPS"
START=$(date +%s)
DEADLINE=$((START + BUDGET))

if [ "$DRY_RUN" = 1 ]; then
    DEVICE=cpu
    # The Triton interpreter on CPU tensors; one BLAS thread (numpy's threads fight the pytest workers otherwise).
    export WNA16_TRITON_INTERPRET=1 TRITON_INTERPRET=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
    SUITE_OPTIONS=(--wna16-max-dim=256 -k "w4g128sym-bf16 or w8channelasym-fp16")
    JOBS_REFERENCE=0 JOBS_ROCM=0 JOBS_MARLIN=0
    BENCH_OPTIONS=(--device cpu --shapes 256x128 --ms 1,16 --rounds 2 --copy-mib 8 --cache-mib 0.03)
    CAP_ENV=60 CAP_INSTALL=120 CAP_SUITES=240 CAP_BENCH=120 CAP_MATRIX=60
else
    DEVICE=cuda:0
    SUITE_OPTIONS=()
    # ~1000 distinct Triton specialisations in the rocm suite (counted under the interpreter: one per test, nearly),
    # each compiled once (1-10 s of one core): most of the 16 cores go to it.
    JOBS_REFERENCE=2 JOBS_ROCM=12 JOBS_MARLIN=1
    BENCH_OPTIONS=(--device cuda:0 --shapes 4096x4096,8192x28672 --ms 1,16,128 --rounds 20)
    CAP_ENV=30 CAP_INSTALL=90 CAP_SUITES=240 CAP_BENCH=170 CAP_MATRIX=30
fi

say() { echo "[gpu_check $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# step NAME CAP RESERVE LOGFILE CMD...: run CMD with a limit of min(CAP, time left - RESERVE) seconds (SIGINT first:
# pytest still writes the report of the tests that ran (checked: xdist's shutdown may then hang, hence SIGKILL 15 s
# later); output to LOGFILE; a row in the step table.
step() {
    local name="$1" cap="$2" reserve="$3" log="$4"
    shift 4
    local left=$((DEADLINE - $(date +%s) - reserve)) limit="$cap"
    [ "$left" -lt "$limit" ] && limit="$left"
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskip\t0\t%s\n' "$name" "$limit" >> "$STEPS"
        echo "step $name skipped: no time left" >> "$log"
        return 0
    fi
    local t0 rc
    t0=$(date +%s%N)
    timeout -s INT -k 15 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$limit" >> "$STEPS"
    return "$rc"
}

say "repository $ROOT, output $OUT_DIR, device $DEVICE, budget ${BUDGET}s, python $PYTHON"

# 1. The machine.
step environment "$CAP_ENV" 400 "$LOG" "$PYTHON" "$HELPER" environment "$WORK/environment.json"
if [ "$DRY_RUN" = 1 ]; then
    SLUG=cpu-dry-run
else
    SLUG="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)"
    SLUG="$("$PYTHON" "$HELPER" device-slug "${SLUG:-cuda-unknown}")"
fi

# 2. Install offline.
DISTS=(core backends/reference backends/rocm backends/cuda_marlin conformance)
PIP_ARGS=()
PATH_ARGS=()
for d in "${DISTS[@]}"; do PIP_ARGS+=(-e "$ROOT/$d"); PATH_ARGS+=("$ROOT/$d"); done
METHOD="$INSTALL"
if [ "$INSTALL" != path ]; then
    # In auto mode a failure here is not a problem of the run: the fallback below installs instead.
    name=install-pip
    [ "$INSTALL" = auto ] && name="install-pip(optional)"
    if step "$name" "$CAP_INSTALL" 380 "$LOG" "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index \
        --disable-pip-version-check -q "${PIP_ARGS[@]}"; then
        METHOD=pip
    elif [ "$INSTALL" = auto ]; then
        say "pip could not install the distributions offline (see above): falling back to dist-info on PYTHONPATH"
        METHOD=path
    fi
fi
if [ "$METHOD" = path ]; then
    step install-path "$CAP_INSTALL" 300 "$LOG" "$PYTHON" "$HELPER" install-path "$WORK/site" "${PATH_ARGS[@]}" \
        && export PYTHONPATH="$WORK/site:$(cat "$WORK/site/pythonpath.txt")${PYTHONPATH:+:$PYTHONPATH}"
fi
WHEELHOUSE="${WNA16_WHEELHOUSE:-$ROOT/.whl}"
if ! "$PYTHON" -c 'import jsonschema' 2>/dev/null; then
    if [ -d "$WHEELHOUSE" ]; then
        step install-jsonschema 60 300 "$LOG" "$PYTHON" -m pip install --no-index --find-links "$WHEELHOUSE" \
            --disable-pip-version-check -q --target "$WORK/jsonschema" jsonschema \
            && export PYTHONPATH="$WORK/jsonschema${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! "$PYTHON" -c 'import jsonschema' 2>/dev/null; then
        say "jsonschema is not importable: the conformance reports are written without schema validation"
        export WNA16_REPORT_UNVALIDATED=1
    fi
fi
say "installed with: $METHOD"
timeout 60 "$PYTHON" -m wna16.cli backends --device "$DEVICE" >> "$LOG" 2>&1 || say "wna16 backends failed (see log)"

# 3. The conformance suite, three backends at once (none of them is timed).
suite() {  # suite BACKEND JOBS [VAR=value...]: the command line of one conformance run
    local backend="$1" jobs="$2"
    shift 2
    SUITE=(env "$@" "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs wna16_conformance --wna16-backend="$backend"
        --wna16-device="$DEVICE" --wna16-profile=ci --wna16-report="$OUT_DIR/conformance-$backend-$SLUG.json"
        -n "$jobs" "${SUITE_OPTIONS[@]}")
}
say "conformance: reference, rocm, marlin on $DEVICE"
suite reference "$JOBS_REFERENCE"
step suite-reference "$CAP_SUITES" 190 "$WORK/reference.log" "${SUITE[@]}" &
suite rocm "$JOBS_ROCM" WNA16_ROCM_AUTOTUNE=0
step suite-rocm "$CAP_SUITES" 190 "$WORK/rocm.log" "${SUITE[@]}" &
suite marlin "$JOBS_MARLIN"
step suite-marlin "$CAP_SUITES" 190 "$WORK/marlin.log" "${SUITE[@]}" &
wait
for b in reference rocm marlin; do
    { echo "---- conformance $b (last 200 lines)"; tail -n 200 "$WORK/$b.log"; } >> "$LOG"
    tail -n 2 "$WORK/$b.log" | sed "s/^/[$b] /"
done

# 4. The benchmark, alone on the device.
say "benchmark: Triton vs cuBLAS bf16 and the copy roofline"
step bench "$CAP_BENCH" 30 "$LOG" "$PYTHON" "$ROOT/ci/bench/bench_triton.py" "${BENCH_OPTIONS[@]}" \
    --json "$OUT_DIR/bench-triton-$SLUG.json"

# 5. The matrix and the summary.
REPORTS=("$OUT_DIR"/conformance-*-"$SLUG".json)
step matrix "$CAP_MATRIX" 5 "$LOG" "$PYTHON" -m wna16.cli matrix "${REPORTS[@]}" \
    --markdown "$OUT_DIR/SUPPORT_MATRIX.md" --html "$OUT_DIR/support_matrix.html"
say "install method $METHOD; total $(($(date +%s) - START)) s"
"$PYTHON" "$HELPER" summarize "$OUT_DIR" "$STEPS" "$WORK/environment.json" | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
