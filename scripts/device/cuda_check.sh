#!/usr/bin/env bash
# The CUDA checks, run on the GPU machine: the backend conformance suite (every CUDA op against its
# CPU twin) and the op benchmark beside PyTorch on the same GPU, results into OUT.
#   scripts/device/cuda_check.sh BIN_DIR OUT [reps]
# BIN_DIR holds dseek_backend_tests and bench_cuda_ops from a -DDSEEK_CUDA=ON build (built there,
# or built elsewhere and carried with their shared libraries in BIN_DIR/lib).
set -uo pipefail
BIN=${1:?usage: cuda_check.sh BIN_DIR OUT [reps]}
OUT=${2:?usage: cuda_check.sh BIN_DIR OUT [reps]}
REPS=${3:-20}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$BIN/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

echo "== backend conformance (CUDA vs CPU)"
"$BIN/dseek_backend_tests" >"$OUT/backend.log" 2>&1 || status=1
grep -E '^\[backend\]' "$OUT/backend.log" >"$OUT/backend_table.txt" || true
grep -E 'FAIL|PASSED|FAILED|SKIPPED|tests ran' "$OUT/backend.log" | tail -n 30
echo "$(grep -c ' ok$' "$OUT/backend_table.txt") comparisons ok, $(grep -c 'FAIL$' "$OUT/backend_table.txt") failed"

if [[ -x $BIN/bench_cuda_ops ]]; then
  echo "== op benchmark: dseek"
  "$BIN/bench_cuda_ops" "$REPS" 2>&1 | tee "$OUT/bench_dseek.md" || status=1
  echo "== op benchmark: PyTorch"
  python3 "$HERE/bench/cuda_ops_torch.py" "$REPS" 2>&1 | tee "$OUT/bench_torch.md" || status=1
fi
exit $status
