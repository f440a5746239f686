#!/usr/bin/env bash
# A/B runs on the GPU machine of binaries built elsewhere (scripts/device/pack_binaries.sh) and
# carried there: the backend tests, training steps, kernel profiles, transformers' training step
# and batch-1 decode, each variant beside the others in one call: what it prints also in
# $OUT/summary.txt, the logs (tests, each variant, kernel profiles, traces) in $OUT/logs.tar.xz.
#   [VARIABLES] scripts/device/ab_run.sh PARTS        (from the repository root)
# PARTS: a comma list of tests, train, trainprof, torchtrain, decode.
# Binary sets: "default" from $BIN_TAR (.devcarry/bin.tar.xz), "base" from $BASE_TAR
# (.devcarry/base.tar.xz) where it exists — say, main's binaries beside a branch's.
# TRAIN_ONLY, PROF_ONLY, DECODE_ONLY: ';' lists of variants, each words: a binary set, then
# NAME=VALUE environment words and --flags for the program, e.g.
#   TRAIN_ONLY="base;default;default DSEEK_ROWS_AHEAD=0;default --grads bf16"
# train runs bench_train_cuda --layers 4 --batch 2 --seq 2048 --steps 5 --warmup 2 --moments bf16
# --precision default (issue 10's step), decode bench_decode_cuda --layers 27 --prompt 128 --new
# 64 --prefill 0 --batches 1 --batch-steps 2, trainprof the step under the kernel profiler
# (PROF_TRACE=1: its timeline too). TEST_FILTER: a gtest filter for the tests; DEADLINE: seconds
# for the whole run (parts and variants that would not fit are skipped).
set -uo pipefail
PARTS=${1:-tests}
ROOT=$PWD
OUT=${OUT:-/tmp/out}
BIN_TAR=${BIN_TAR:-.devcarry/bin.tar.xz}
BASE_TAR=${BASE_TAR:-.devcarry/base.tar.xz}
DEADLINE=${DEADLINE:-560}
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - start))); }
for set in default base; do
  tarball=$BIN_TAR
  [[ $set == base ]] && tarball=$BASE_TAR
  [[ -f $tarball ]] || continue
  mkdir -p "/tmp/$set" && tar -xJf "$tarball" -C "/tmp/$set"
done
# The tests look for the sources and the dseek program where they were built: /work/main and
# /work/main/build-rel (DSEEK_SOURCE_DIR, DSEEK_BINARY of a build in /work/main).
mkdir -p /work "$ROOT/build-rel"
[[ -e /work/main ]] || ln -s "$ROOT" /work/main
[[ -f $ROOT/build-rel/dseek && ! -L $ROOT/build-rel/dseek ]] ||  # (a build there stays)
  ln -sf /tmp/default/dseek "$ROOT/build-rel/dseek"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
if nccl_lib=$(python3 -c "import nvidia.nccl as n; print(list(n.__path__)[0] + '/lib')" 2>/dev/null); then
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$nccl_lib
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} OMP_WAIT_POLICY=passive
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
has() { [[ ",$PARTS," == *",$1,"* ]]; }
# variant "WORDS": SET (the binary set), ENVS and FLAGS.
variant() {
  local words
  read -ra words <<<"$1"
  SET=${words[0]}
  ENVS=()
  FLAGS=()
  for w in "${words[@]:1}"; do
    if [[ $w != --* && $w == *=* ]]; then ENVS+=("$w"); else FLAGS+=("$w"); fi
  done
}
# in_set SET CMD...: CMD with the set's carried libraries first.
in_set() {
  local set=$1
  shift
  env LD_LIBRARY_PATH="/tmp/$set/lib:$LD_LIBRARY_PATH" "$@"
}
TRAIN_ARGS=(--layers 4 --batch 2 --seq 2048 --steps 5 --warmup 2 --moments bf16 --precision default)
# each PART VARIANTS MIN_SECONDS FN: for every variant of the ';' list (parsed by `variant`), FN
# with its 1-based index, while MIN_SECONDS of the deadline are left.
each() {
  local part=$1 list=$2 min=$3 fn=$4 i=0 v variants
  IFS=';' read -ra variants <<<"$list"
  for v in "${variants[@]}"; do
    variant "$v"
    i=$((i + 1))
    (($(left) < min)) && { echo "no time left for $part [$v]"; break; }
    echo "== $part [$v]"
    "$fn" "$i"
  done
}
train_one() {
  in_set "$SET" env "${ENVS[@]}" timeout 200 "/tmp/$SET/bench_train_cuda" "${TRAIN_ARGS[@]}" \
    "${FLAGS[@]}" >"$OUT/train_$1.log" 2>&1
  grep -E '^\| dseek|^MFU|^medians|bench_train_cuda:' "$OUT/train_$1.log"
}
trainprof_one() {
  local trace=()
  [[ -n ${PROF_TRACE:-} ]] && trace=("DSEEK_KPROF_TRACE=$OUT/trace_$1.csv")
  in_set "$SET" env "${ENVS[@]}" "${trace[@]}" "DSEEK_KPROF=$OUT/kprof_train_$1.md" \
    "LD_PRELOAD=/tmp/$SET/libkernel_profile.so" timeout 200 "/tmp/$SET/bench_train_cuda" \
    "${TRAIN_ARGS[@]}" "${FLAGS[@]}" >"$OUT/trainprof_$1.log" 2>&1
  grep -E '^\| dseek' "$OUT/trainprof_$1.log"
  head -n "${PROF_LINES:-25}" "$OUT/kprof_train_$1.md" 2>/dev/null
}
decode_one() {
  in_set "$SET" env "${ENVS[@]}" timeout 240 "/tmp/$SET/bench_decode_cuda" --layers 27 \
    --prompt 128 --new 64 --prefill 0 --batches 1 --batch-steps 2 "${FLAGS[@]}" \
    >"$OUT/decode_$1.log" 2>&1
  grep -E '^\|' "$OUT/decode_$1.log" | head -n 14
}
# Every part's lines also go to $OUT/summary.txt, and the logs into one $OUT/logs.tar.xz at the
# end: the device tool brings back only so many files, and a long call's first lines fall out of
# the output's tail.
run_parts() {
  if has tests; then
    echo "== tests ${TEST_FILTER:-*}"
    in_set default timeout $(($(left) - 20)) /tmp/default/dseek_backend_tests \
      --gtest_filter="${TEST_FILTER:-*}" >"$OUT/tests.log" 2>&1
    echo "tests: exit $?"
    grep -E '^\[ +(OK|FAILED|PASSED|SKIPPED) |^\[backend\].*(FAIL|differ)' "$OUT/tests.log" | tail -60
  fi
  has train && each train "${TRAIN_ONLY:-default}" 60 train_one
  has trainprof && each trainprof "${PROF_ONLY:-default}" 60 trainprof_one
  if has torchtrain; then
    if (($(left) > 150)); then
      echo "== transformers' training step"
      /tmp/default/bench_train_cuda --write-config "$OUT/v2_lite_4.json" --layers 4 >/dev/null
      timeout $(($(left) - 10)) python3 bench/issue10_torch.py --config "$OUT/v2_lite_4.json" \
        --what train --train-layers 4 --batch 2 --seq 2048 --steps 5 --warmup 2 >"$OUT/torch.log" 2>&1
      grep -E '^\|' "$OUT/torch.log" | tail -6
    else
      echo "no time left for transformers"
    fi
  fi
  has decode && each decode "${DECODE_ONLY:-default}" 90 decode_one
  echo "== done in $(($(date +%s) - start)) s"
}
run_parts 2>&1 | tee "$OUT/summary.txt"
(cd "$OUT" && shopt -s nullglob && logs=(*.log *.md *.csv) &&
  ((${#logs[@]})) && tar -cJf logs.tar.xz --remove-files "${logs[@]}")
