#!/usr/bin/env bash
# Issue 10's benchmarks, run on the GPU machine: dseek's training step and inference beside
# transformers on the same shapes in one run, the side-by-side table into OUT/issue10.md.
#   scripts/device/bench_issue10.sh BIN_DIR OUT [parts]
# BIN_DIR holds bench_train_cuda and bench_decode_cuda from a -DDSEEK_CUDA=ON -DDSEEK_BENCH=ON
# build (built there, or built elsewhere and carried with their shared libraries in BIN_DIR/lib).
# parts: a comma list of train, decode, torch (default: all three). Each part writes its own JSON
# and log into OUT, so a run split over several calls (each under the device's 10-minute limit)
# merges the same way; the merge reads whatever is in OUT. A program that crashes or throws
# leaves "n/a" in its rows and its exit status in OUT/status.txt. Takes about 3-5 minutes in all
# on an H200 (torch.compile of 4 layers is a minute of it).
set -uo pipefail
USAGE="bench_issue10.sh BIN_DIR OUT [train,decode,torch]"
DEFAULT_PARTS=train,decode,torch
HERE=$(cd "$(dirname "$0")/../.." && pwd)
source "$(dirname "$0")/common.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
"$BIN/bench_train_cuda" --write-config "$OUT/v2_lite_4.json" --layers 4 >/dev/null || status=1

# run NAME LIMIT_S CMD...: runs CMD with its output in OUT/NAME.log, records the exit status.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$OUT/commands.txt"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local what="ok"
  if ((rc == 124 || rc == 137)); then what="timed out after ${limit}s"
  elif ((rc > 128)); then what="crashed (signal $((rc - 128)))"
  elif ((rc != 0)); then what="failed (exit $rc)"; fi
  echo "$name: $what" >>"$OUT/status.txt"
  ((rc == 0)) || status=1
}

if has train; then
  rm -f "$OUT/train_dseek.json"
  run train_dseek 240 "$BIN/bench_train_cuda" --layers 4 --batch 2 --seq 2048 --steps 5 \
    --warmup 2 --json "$OUT/train_dseek.json"
fi
if has decode; then
  rm -f "$OUT/decode_dseek.json"
  run decode_dseek 300 "$BIN/bench_decode_cuda" --layers 27 --prompt 128 --new 64 \
    --prefill 4096 --batches 32,64,128 --batch-steps 32 --json "$OUT/decode_dseek.json"
fi
if has torch; then
  rm -f "$OUT/torch.json"
  run torch 540 python3 "$HERE/bench/issue10_torch.py" --config "$OUT/v2_lite_4.json" \
    --train-layers 4 --decode-layers 27 --batch 2 --seq 2048 --steps 5 --warmup 2 \
    --prompt 128 --new 64 --batches 32,64,128 --batch-steps 32 --prefill 4096 \
    --json "$OUT/torch.json"
fi

{
  echo "# Issue 10 benchmarks: dseek beside transformers, one run"
  echo
  commit=$(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?')
  gpu=$(tail -n +2 "$OUT/gpu.txt" | head -1)
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit, GPU: $gpu"
  echo
  python3 "$HERE/bench/issue10_torch.py" --merge "$OUT"
  echo
  echo "Shape: DeepSeek-V2-Lite (vocab 102400, hidden 2048, 16 heads, MLA kv_lora 512 without"
  echo "q_lora, qk_nope 128, qk_rope 64, v_head 128, 64 routed experts of width 1408 top-6 + 2"
  echo "shared, layer 0 dense of width 10944), random weights; config in v2_lite_4.json. dseek"
  echo "trains with f32 masters and bf16 compute copies; transformers with bf16 parameters and"
  echo "fused AdamW. Medians of synchronised timings; batched dseek decode times the forwards only."
  echo
  echo "Programs' exit status:"
  echo
  sed 's/^/    /' "$OUT/status.txt" 2>/dev/null
  echo
  echo "Commands (scripts/device/bench_issue10.sh $*):"
  echo
  sed 's/^/    /' "$OUT/commands.txt" 2>/dev/null
} >"$OUT/issue10.md"
cat "$OUT/issue10.md"
exit $status
