#!/usr/bin/env bash
# FP8 training on the GPU machine: the FP8 backend tests, the training step in bf16 and with FP8
# projections (f32 and bf16 AdamW moments each), the FP8 GEMM benchmark, and a kernel profile of
# the FP8 step, results into OUT (docs/FP8.md's "GPU step time" figures).
#   scripts/device/bench_fp8.sh BIN_DIR OUT [parts]
# BIN_DIR holds dseek_backend_tests, bench_train_cuda, bench_cuda_fp8 and libkernel_profile.so
# from a -DDSEEK_CUDA=ON -DDSEEK_BENCH=ON build (built there, or built elsewhere and carried with
# their shared libraries in BIN_DIR/lib). parts: a comma list of tests, train, gemm, profile
# (default: all). About two minutes on an H200.
set -uo pipefail
USAGE="bench_fp8.sh BIN_DIR OUT [tests,train,gemm,profile]"
DEFAULT_PARTS=tests,train,gemm,profile
source "$(dirname "$0")/common.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

if has tests; then
  echo "== FP8 backend tests"
  "$BIN/dseek_backend_tests" --gtest_filter='*Fp8*:*fp8*:*FP8*' >"$OUT/fp8_tests.log" 2>&1 || status=1
  grep -E '^\[backend\]|PASSED|FAILED' "$OUT/fp8_tests.log" | tail -n 40
fi
step="--layers 4 --batch 2 --seq 2048 --steps 5 --warmup 2"
if has train; then
  for precision in default fp8; do
    for moments in f32 bf16; do
      echo "== bench_train_cuda $step --precision $precision --moments $moments"
      "$BIN/bench_train_cuda" $step --precision "$precision" --moments "$moments" \
        >"$OUT/train_${precision}_${moments}.log" 2>&1 || status=1
      grep -E '^\| dseek' "$OUT/train_${precision}_${moments}.log"
    done
  done
fi
if has gemm; then
  echo "== bench_cuda_fp8 20"
  "$BIN/bench_cuda_fp8" 20 2>&1 | tee "$OUT/bench_cuda_fp8.md" || status=1
fi
if has profile; then
  echo "== kernel profile of the FP8 step (bf16 moments)"
  DSEEK_KPROF="$OUT/kernel_profile_fp8.md" LD_PRELOAD="$BIN/libkernel_profile.so" \
    "$BIN/bench_train_cuda" $step --precision fp8 --moments bf16 >/dev/null 2>&1 || status=1
  head -n 24 "$OUT/kernel_profile_fp8.md"
fi
exit $status
