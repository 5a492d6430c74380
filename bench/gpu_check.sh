#!/usr/bin/env bash
# One prepared GPU check: the GPU kernel tests (bf16, autotune), the attention benchmark, real
# forget jobs on the SD1.5 and SDXL architectures (random weights, real shapes) measured beside
# bench/estimate_gpu.py's estimates, and the kernel test suite natively on CUDA with the fixed
# (non-autotuned) config. At most 7.5 minutes from a bare CUDA machine: every step has a hard cap.
#
#   bash bench/gpu_check.sh             # on a CUDA machine, from the repo root or anywhere
#   bash bench/gpu_check.sh --dry-run   # on a CPU: tiny shapes, the Triton interpreter; checks
#                                       # the script, its steps and outputs (no figures)
#   PY=/path/to/python bash bench/gpu_check.sh
#
# Needs a python with torch, triton and pytest, and nothing from the network: the machine may
# have none. The forget jobs need diffusers; where it is missing the script installs the wheels
# in bench/wheels (`bash bench/fetch_wheels.sh` fills it where PyPI is reachable; bring the
# folder along: it is git-ignored) into a scratch folder, not into that python.
# Outputs go to $OUT when set (else /tmp/fmn_gpu_check): one log per step, summary.txt,
# forget_table.md (the measured forget jobs beside the estimates) and a copy of
# docs/research/BENCHMARKS.md with the attention and forget tables appended (the checkout's
# own file is left as it is).
set -euo pipefail

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PY:-python3}"
OUTDIR="${OUT:-/tmp/fmn_gpu_check}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset FMN_ATTN_BACKEND FMN_TRITON_AUTOTUNE
if [ "$DRY" = 1 ]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi
# Step caps in seconds (sum 440 s, plus about 20 s of set-up: under 8 minutes). The dry run
# is a check, not a budget: a shared CPU can be many times slower, so its caps are loose.
if [ "$DRY" = 1 ]; then
  DEFAULT_CAPS=(600 600 900 0)
  export OMP_NUM_THREADS=1  # one thread beats two on a busy CPU
else
  DEFAULT_CAPS=(140 110 150 40)
fi
CAP_GPU_TESTS="${CAP_GPU_TESTS:-${DEFAULT_CAPS[0]}}"
CAP_BENCH="${CAP_BENCH:-${DEFAULT_CAPS[1]}}"
CAP_FORGET="${CAP_FORGET:-${DEFAULT_CAPS[2]}}"
CAP_FIXED_TESTS="${CAP_FIXED_TESTS:-${DEFAULT_CAPS[3]}}"
# A scratch copy of BENCHMARKS.md that the benchmarks append to; the checkout is left as is.
BENCH_MD="$OUTDIR/BENCHMARKS.md"
cp docs/research/BENCHMARKS.md "$BENCH_MD"

declare -A STATUS=()
FAILED=0
step() {  # step NAME CAP CMD...: run with a hard time cap, log to $OUTDIR/NAME.log, keep going
  local name="$1" cap="$2"
  shift 2
  echo "=== [$name] (cap ${cap}s): $*"
  local start=$SECONDS rc=0
  timeout --signal=TERM --kill-after=10 "$cap" "$@" 2>&1 | tee "$OUTDIR/$name.log" || rc=$?
  STATUS[$name]="rc=$rc in $((SECONDS - start))s"
  if [ "$rc" -ne 0 ]; then FAILED=1; fi
  echo "=== [$name] ${STATUS[$name]}"
}

echo "=== versions ($(date -u '+%Y-%m-%d %H:%M UTC'))$([ "$DRY" = 1 ] && echo ', DRY RUN on the CPU')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$PY" - "$DRY" <<'PYEOF'
import sys, torch, triton
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| triton", triton.__version__)
if sys.argv[1] == "0":
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (on a CPU use --dry-run)")
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "| SMs", p.multi_processor_count, "| memory GiB",
          round(p.total_memory / 2**30, 1))
PYEOF
"$PY" -m pytest --version

# diffusers for the forget jobs: installed here, or the carried wheels, unpacked to scratch.
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ls bench/wheels/*.whl >/dev/null 2>&1; then
    SITE="$(mktemp -d /tmp/fmn_site.XXXXXX)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" bench/wheels/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE"
    "$PY" -c "import diffusers; print('diffusers', diffusers.__version__, 'from bench/wheels')"
  else
    echo "gpu_check: diffusers is missing and bench/wheels holds no wheels" \
      "(bash bench/fetch_wheels.sh, then bring bench/wheels): the forget step will fail"
  fi
fi

# --confcutdir: the kernel tests need neither the application's conftest nor its dependencies.
PYTEST=("$PY" -m pytest --confcutdir=tests/kernels -p no:cacheprovider -q -ra)

if [ "$DRY" = 1 ]; then
  # 1. The GPU tests cannot run here: check that they import and are collected.
  step gpu_tests "$CAP_GPU_TESTS" "${PYTEST[@]}" -m gpu --collect-only tests/kernels
  # 2. The benchmark script on tiny shapes in the interpreter (figures are not benchmarks).
  step bench_attention "$CAP_BENCH" "$PY" bench/bench_attention.py --smoke --out "$BENCH_MD"
  # 3. The forget jobs at toy widths on the CPU, with the table written as on a GPU.
  step bench_forget "$CAP_FORGET" "$PY" bench/bench_forget.py --tiny --device cpu --steps 2 \
    --batch-size 2 --references 2 --arch sd1 --arch sdxl --out "$BENCH_MD" \
    --table "$OUTDIR/forget_table.md"
else
  # 1. GPU-only tests: SD shapes, bf16, fp16, fp32, autotuned configs, determinism, memory.
  step gpu_tests "$CAP_GPU_TESTS" "${PYTEST[@]}" -m gpu tests/kernels
  # 2. Kernel benchmark, fp16, all presets (a partial table, marked so, if the cap is reached).
  step bench_attention "$CAP_BENCH" env TRITON_PRINT_AUTOTUNING=1 "$PY" bench/bench_attention.py \
    --out "$BENCH_MD"
  # 3. Forget jobs (faithful and fast, eager and fused) on the SD1.5 and SDXL architectures at
  #    the product's batch size, beside the estimates; the table is rewritten after every job,
  #    so a job cut off by the cap leaves the others.
  step bench_forget "$CAP_FORGET" "$PY" bench/bench_forget.py --steps 6 --arch sd1 --arch sdxl \
    --out "$BENCH_MD" --table "$OUTDIR/forget_table.md"
  # 4. The interpreter test suite, natively on CUDA, with the fixed (non-autotuned) config.
  step fixed_config_tests "$CAP_FIXED_TESTS" env FMN_TRITON_AUTOTUNE=0 "${PYTEST[@]}" tests/kernels
fi

echo "=== summary"
for name in gpu_tests bench_attention bench_forget fixed_config_tests; do
  echo "$name: ${STATUS[$name]:-not run}"
done | tee "$OUTDIR/summary.txt"
exit "$FAILED"
