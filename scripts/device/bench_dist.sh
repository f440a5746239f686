#!/usr/bin/env bash
# Issue 5's GPU checks and measurements, on a machine with 2 (or more) GPUs: the NCCL group's
# tests, all-reduce algorithms on GPU buffers, expert parallelism's token exchange against the
# link, and the scaling of data- and expert-parallel training (tokens/s on 2 GPUs against 1, the
# same per-GPU batch) on the V2-Lite-shaped 4-layer model.
#   scripts/device/bench_dist.sh BIN_DIR OUT [parts]
# BIN_DIR holds dseek, dseek_backend_tests, bench_allreduce, bench_alltoall and bench_train_cuda
# from a -DDSEEK_CUDA=ON -DDSEEK_BENCH=ON build with NCCL (CMake's "NCCL: ..." line). parts: a
# comma list of tests, allreduce, alltoall, scaling (default: all). Logs and tables into OUT; exit
# statuses into OUT/status.txt.
set -uo pipefail
USAGE="bench_dist.sh BIN_DIR OUT [tests,allreduce,alltoall,scaling]"
DEFAULT_PARTS=tests,allreduce,alltoall,scaling
HERE=$(cd "$(dirname "$0")/../.." && pwd)
source "$(dirname "$0")/common.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The device README: NCCL's NVLink multicast stays off.
export NCCL_NVLS_ENABLE=0

nvidia-smi --query-gpu=index,name,memory.total --format=csv >"$OUT/gpu.txt" 2>&1
nvidia-smi topo -m >>"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

# run NAME LIMIT_S CMD...: CMD's output into OUT/NAME.log, its exit status into OUT/status.txt.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -40 "$OUT/$name.log"
  echo "$name: exit $rc" >>"$OUT/status.txt"
  ((rc == 0)) || status=1
}

if has tests; then
  run nccl_tests 400 "$BIN/dseek_backend_tests" \
    --gtest_filter='BackendNccl.*:BackendTrainCli.TwoGpu*'
fi

if has allreduce; then
  run allreduce 300 mpirun -np 2 --bind-to none "$BIN/bench_allreduce" --gpu 1024 10
fi

if has alltoall; then
  # Expert parallelism's token exchange on GPU buffers: V2-Lite's shape (2 × 2048 tokens a rank,
  # hidden 2048, top-6 of 64) and V3's (hidden 7168, top-8 of 256), beside the pair swap (the link).
  run alltoall_v2lite 300 mpirun -np 2 --bind-to none "$BIN/bench_alltoall" --gpu 4096 2048 64 6 10
  run alltoall_v3 300 mpirun -np 2 --bind-to none "$BIN/bench_alltoall" --gpu 4096 7168 256 8 10
fi

if has scaling; then
  # A corpus made from this repository's own text (the GPU machine has no fortunes package).
  work=$OUT/scaling
  mkdir -p "$work"
  find "$HERE/docs" "$HERE/src" -name '*.md' -o -name '*.cpp' -o -name '*.h' | sort |
    xargs cat >"$work/corpus.txt"
  "$BIN/dseek" tokenizer train --input "$work/corpus.txt" --vocab-size 4096 \
    --out "$work/tok" >"$work/prep.log" 2>&1 || status=1
  "$BIN/dseek" data prepare --tokenizer "$work/tok" --input "$work/corpus.txt" \
    --out "$work/data" >>"$work/prep.log" 2>&1 || status=1
  "$BIN/bench_train_cuda" --write-config "$work/v2_lite_4.json" --layers 4 >/dev/null || status=1
  # Per GPU: 2 sequences of 2048 tokens a step, bf16 compute, f32 moments; 10 steps, the first 3
  # are warm-up.
  common=(train --device cuda --model-config "$work/v2_lite_4.json" --tokenizer "$work/tok"
    --data "$work/data" --steps 10 --set data.seq_len=2048 --set train.compute_dtype=bf16
    --set eval.interval=1000 --set checkpoint.interval=1000 --set data.val_fraction=0.01)
  run scaling_1gpu 400 "$BIN/dseek" "${common[@]}" --out "$work/run1" --set train.batch_size=2
  run scaling_2gpu 400 "$BIN/dseek" "${common[@]}" --out "$work/run2" --set train.batch_size=4 \
    --nproc 2
  # Expert parallel: each GPU owns 32 of the 64 routed experts; the rest data parallel.
  run scaling_2gpu_ep 400 "$BIN/dseek" "${common[@]}" --out "$work/run2ep" \
    --set train.batch_size=4 --nproc 2 --expert-parallel 2
  python3 - "$work" >"$OUT/scaling.md" <<'EOF'
import json, statistics, sys
work = sys.argv[1]
def rate(run):
    try:
        lines = [json.loads(l) for l in open(f"{work}/{run}/metrics.jsonl")]
    except OSError:
        return None
    steps = [l["tokens_per_s"] for l in lines[3:]]
    return statistics.median(steps) if steps else None
one, two, two_ep = rate("run1"), rate("run2"), rate("run2ep")
print("| GPUs | tokens/s (median of steps 4-10) | scaling efficiency |")
print("| --- | --- | --- |")
print(f"| 1 | {one:,.0f} | - |" if one else "| 1 | n/a | - |")
for name, r in (("2, data parallel", two), ("2, expert parallel 2", two_ep)):
    if one and r:
        print(f"| {name} | {r:,.0f} | {r / (2 * one):.1%} |")
    else:
        print(f"| {name} | n/a | - |")
EOF
  cat "$OUT/scaling.md"
fi
exit $status
