#!/usr/bin/env bash
# The balancing and multi-token-prediction experiments of docs/TRAINING.md at small scale: several
# `dseek train` runs on the same data, seed and steps, run IN PARALLEL (each with THREADS OpenMP
# threads), differing only in the setting under test:
#   A  loss-free balancing (DeepSeek-V3): moe.bias_update_speed=GAMMA, moe.aux_loss=none
#      (GAMMA [0.01]: the paper's 0.001 is tuned for ~100K steps; a few hundred need larger)
#   B  auxiliary loss (V3's sequence-wise): bias_update_speed=0, aux_loss=sequence, aux_alpha=0.01
#   C  auxiliary loss (DeepSeekMoE expert-level): bias_update_speed=0, aux_loss=expert, α=0.01
#   D  MTP off: mtp.lambda=0, otherwise as A (A has the default λ = 0.3)
# then `dseek plot` per run and a markdown table (scripts/experiments/summarize.py): final
# validation loss, MaxVio_global of the last validation, mean batch MaxVio over the last 20% of
# steps, train loss, tokens/s.
#
# Usage: balance_and_mtp.sh DSEEK TOKENIZER_DIR DATA_DIR [OUT_DIR]
#   (or the environment variables DSEEK, TOKENIZER, DATA, OUT_DIR)
# Settings from the environment (defaults in brackets):
#   RUNS [A B C D]   which runs      PRESET [tiny]    STEPS [300]     SEQ_LEN [128]   BATCH [8]
#   SEED [0]         THREADS [nproc / number of runs, at least 1]     EVAL_INTERVAL [50]
#   EVAL_SEQUENCES [32]   LR [3e-3]   GAMMA [0.01] (γ of runs A, D)
#   EXTRA_ARGS [] (more `dseek train` arguments, every run)
#   FORCE [0]        1: delete existing run directories of the same names under OUT_DIR first
# Output: OUT_DIR/<run>/ (run directories with plots), OUT_DIR/<run>.log, OUT_DIR/results.md.
# Speed: an OpenBLAS older than the CPU runs generic kernels (Debian 12's 0.3.21 picks "Prescott"
# on the GPU hosts' 16-core AVX-512-FP16 Xeon, ~3x slower steps): there, first
# `export OPENBLAS_CORETYPE=Cooperlake` (bench_train prints the kernels OpenBLAS chose).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
die() { echo "balance_and_mtp: $*" >&2; exit 1; }

[[ ${1:-} == -h || ${1:-} == --help ]] && usage
DSEEK=${1:-${DSEEK:-}}
TOKENIZER=${2:-${TOKENIZER:-}}
DATA=${3:-${DATA:-}}
OUT_DIR=${4:-${OUT_DIR:-runs/balance_and_mtp}}
[[ -n $DSEEK && -n $TOKENIZER && -n $DATA ]] || usage

RUNS=${RUNS:-A B C D}
PRESET=${PRESET:-tiny}
STEPS=${STEPS:-300}
SEQ_LEN=${SEQ_LEN:-128}
BATCH=${BATCH:-8}
SEED=${SEED:-0}
EVAL_INTERVAL=${EVAL_INTERVAL:-50}
EVAL_SEQUENCES=${EVAL_SEQUENCES:-32}
LR=${LR:-3e-3}
GAMMA=${GAMMA:-0.01}
EXTRA_ARGS=${EXTRA_ARGS:-}
FORCE=${FORCE:-0}
read -r -a run_list <<<"$RUNS"
(( ${#run_list[@]} > 0 )) || die "RUNS is empty"
THREADS=${THREADS:-$(( $(nproc) / ${#run_list[@]} ))}
(( THREADS >= 1 )) || THREADS=1

[[ -x $DSEEK ]] || die "$DSEEK: not an executable (the dseek binary, e.g. build/dseek)"
[[ -e $TOKENIZER ]] || die "$TOKENIZER: no such tokenizer (a \`dseek tokenizer train\` directory)"
[[ -d $DATA ]] || die "$DATA: no such data directory (a \`dseek data prepare\` directory)"
for v in STEPS SEQ_LEN BATCH SEED EVAL_INTERVAL EVAL_SEQUENCES THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v}: need a non-negative integer"
done
summarize="$(cd "$(dirname "$0")" && pwd)/summarize.py"
[[ -f $summarize ]] || die "$summarize: missing"

settings_of() {
  case $1 in
    A) echo "--set moe.bias_update_speed=$GAMMA --set moe.aux_loss=none" ;;
    B) echo "--set moe.bias_update_speed=0 --set moe.aux_loss=sequence --set moe.aux_alpha=0.01" ;;
    C) echo "--set moe.bias_update_speed=0 --set moe.aux_loss=expert --set moe.aux_alpha=0.01" ;;
    D) echo "--set moe.bias_update_speed=$GAMMA --set moe.aux_loss=none --set mtp.lambda=0" ;;
    *) return 1 ;;
  esac
}
for run in "${run_list[@]}"; do
  settings_of "$run" >/dev/null || die "RUNS: unknown run '$run' (A, B, C or D)"
done

mkdir -p "$OUT_DIR"
for run in "${run_list[@]}"; do
  if [[ -e $OUT_DIR/$run ]]; then
    [[ $FORCE == 1 ]] || die "$OUT_DIR/$run exists (FORCE=1 deletes it, or choose another OUT_DIR)"
    rm -rf -- "${OUT_DIR:?}/$run"
  fi
done

echo "balance_and_mtp: ${#run_list[@]} runs (${run_list[*]}) of preset $PRESET in parallel," \
     "$THREADS threads each; $STEPS steps, batch $BATCH x $SEQ_LEN, seed $SEED -> $OUT_DIR"
declare -A pids
start=$SECONDS
for run in "${run_list[@]}"; do
  # shellcheck disable=SC2046,SC2086  # the settings and EXTRA_ARGS are word lists
  "$DSEEK" train --preset "$PRESET" --tokenizer "$TOKENIZER" --data "$DATA" \
    --out "$OUT_DIR/$run" --steps "$STEPS" --seq-len "$SEQ_LEN" --batch-size "$BATCH" \
    --seed "$SEED" --lr "$LR" --threads "$THREADS" \
    --set eval.interval="$EVAL_INTERVAL" --set eval.sequences="$EVAL_SEQUENCES" \
    $(settings_of "$run") $EXTRA_ARGS >"$OUT_DIR/$run.log" 2>&1 &
  pids[$run]=$!
done
# Stop the runs if this script is interrupted (each finishes its step and checkpoints).
stop_runs() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap stop_runs INT TERM

failed=()
for run in "${run_list[@]}"; do
  rc=0
  wait "${pids[$run]}" || rc=$?
  if (( rc == 0 )); then
    echo "  $run: done"
  else
    failed+=("$run")
    echo "  $run: FAILED (exit $rc); end of $OUT_DIR/$run.log:" >&2
    tail -n 5 "$OUT_DIR/$run.log" | tr '\r' '\n' | tail -n 5 >&2
  fi
done
trap - INT TERM
echo "balance_and_mtp: training took $(( SECONDS - start )) s"
(( ${#failed[@]} == 0 )) || die "runs failed: ${failed[*]}"

specs=()
for run in "${run_list[@]}"; do
  "$DSEEK" plot "$OUT_DIR/$run" >>"$OUT_DIR/$run.log" 2>&1 ||
    die "dseek plot $OUT_DIR/$run failed (see $OUT_DIR/$run.log)"
  specs+=("$run=$OUT_DIR/$run")
done
title="dseek balancing and MTP experiments (preset $PRESET, $STEPS steps, batch $BATCH x"
title+=" $SEQ_LEN, seed $SEED, $THREADS threads per run)"
python3 "$summarize" --out "$OUT_DIR/results.md" --title "$title" "${specs[@]}"
echo "balance_and_mtp: table in $OUT_DIR/results.md, plots in $OUT_DIR/<run>/*.png"
