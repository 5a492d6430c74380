#!/usr/bin/env bash
# One prepared GPU check for fmn_kernels: GPU tests (bf16, autotune), the attention
# benchmark (appends docs/research/BENCHMARKS.md), and the CPU test suite run natively on CUDA
# with the fixed (non-autotuned) config. Budget: under 8 minutes on one H200; every step has a
# hard cap.
#
#   bash bench/gpu_check.sh            # from the repo root or anywhere
#   PY=/path/to/python bash bench/gpu_check.sh
#
# Needs: python with CUDA torch, triton and pytest. Does NOT need the application's
# dependencies (diffusers, ...): pytest runs with --confcutdir=tests/kernels so the repo-level
# conftest is not loaded, and fmn_kernels is imported from the checkout (PYTHONPATH).
# If $OUT is set (the device tool), logs and the updated docs/research/BENCHMARKS.md are copied
# there.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PY:-python3}"
LOGDIR="${OUT:-/tmp/fmn_gpu_check}"
mkdir -p "$LOGDIR"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET FMN_ATTN_BACKEND FMN_TRITON_AUTOTUNE
# Step caps in seconds (sum 470 s, plus start-up: under 8 minutes).
CAP_GPU_TESTS="${CAP_GPU_TESTS:-170}"
CAP_BENCH="${CAP_BENCH:-130}"
CAP_FIXED_TESTS="${CAP_FIXED_TESTS:-60}"
CAP_FORGET="${CAP_FORGET:-110}"

declare -A STATUS=()
FAILED=0
step() {  # step NAME CAP CMD...: run with a hard time cap, log to $LOGDIR/NAME.log, keep going
  local name="$1" cap="$2"
  shift 2
  echo "=== [$name] (cap ${cap}s): $*"
  local start=$SECONDS rc=0
  timeout --signal=TERM --kill-after=10 "$cap" "$@" 2>&1 | tee "$LOGDIR/$name.log" || rc=$?
  STATUS[$name]="rc=$rc in $((SECONDS - start))s"
  if [ "$rc" -ne 0 ]; then FAILED=1; fi
  echo "=== [$name] ${STATUS[$name]}"
}

echo "=== versions ($(date -u '+%Y-%m-%d %H:%M UTC'))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" - <<'PYEOF'
import sys, torch, triton
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| triton", triton.__version__)
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
p = torch.cuda.get_device_properties(0)
print("device", p.name, "| SMs", p.multi_processor_count, "| memory GiB",
      round(p.total_memory / 2**30, 1))
PYEOF
"$PY" -m pytest --version

PYTEST=("$PY" -m pytest --confcutdir=tests/kernels -p no:cacheprovider -q -ra)

# 1. GPU-only tests: SD shapes, bf16, fp16, fp32, autotuned configs, determinism, memory.
step gpu_tests "$CAP_GPU_TESTS" "${PYTEST[@]}" -m gpu tests/kernels

# 2. Kernel benchmark, fp16, all presets; appends a table to docs/research/BENCHMARKS.md (a
#    partial table, marked so, if the cap is reached).
step bench_attention "$CAP_BENCH" env TRITON_PRINT_AUTOTUNING=1 "$PY" bench/bench_attention.py

# 3. Full forget jobs (faithful-eager, faithful-fused, fast) on the SD1.5 and SDXL UNet
#    architectures with random weights; appends a table to docs/research/BENCHMARKS.md. Needs
#    diffusers, which the device image lacks: fetch its wheel here first and carry it,
#      pip download --no-deps diffusers==0.42.1 -d bench/wheels   (carry: ["bench/wheels"])
if ! "$PY" -c "import diffusers" 2>/dev/null && ls bench/wheels/diffusers-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps bench/wheels/diffusers-*.whl || true
fi
step bench_forget "$CAP_FORGET" "$PY" bench/bench_forget.py

# 4. The interpreter test suite, natively on CUDA, with the fixed (non-autotuned) config.
step fixed_config_tests "$CAP_FIXED_TESTS" env FMN_TRITON_AUTOTUNE=0 "${PYTEST[@]}" tests/kernels

if [ -n "${OUT:-}" ] && [ -f docs/research/BENCHMARKS.md ]; then cp docs/research/BENCHMARKS.md "$OUT/BENCHMARKS.md"; fi
echo "=== summary"
for name in gpu_tests bench_attention bench_forget fixed_config_tests; do
  echo "$name: ${STATUS[$name]:-not run}"
done
exit "$FAILED"
