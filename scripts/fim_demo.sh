#!/usr/bin/env bash
# Fill-in-the-middle end to end on a small code corpus from a Debian package: the top-level
# functions of the Python standard library (/usr/lib/python3.11, libpython3.11-stdlib), split into
# training and held-out functions by scripts/fim_corpus.py.
#   1. a byte-level BPE with DeepSeek-Coder's FIM sentinels (dseek tokenizer train adds
#      <｜fim▁begin｜> <｜fim▁hole｜> <｜fim▁end｜> as special tokens)
#   2. dseek data prepare --fim-rate 0.5 (PSM, as DeepSeek-Coder / Coder-V2 train)
#   3. dseek train of the tiny preset; the run's checkpoints are exported at EVAL_EVERY steps
#   4. dseek eval fim on held-out functions at each exported checkpoint: the middle's loss
#      (teacher forced) and exact greedy infills — the FIM loss falling as training goes on
#   5. dseek generate --fim-prefix/--fim-suffix on a snippet
#
# Usage: scripts/fim_demo.sh DSEEK [OUT_DIR]
# Settings from the environment: STEPS [600] SEQ_LEN [256] BATCH [8] EVAL_EVERY [150]
#   EVAL_COUNT [40] THREADS [nproc] VOCAB [2048] FORCE [0]
set -euo pipefail
DSEEK=${1:-${DSEEK:-}}
OUT_DIR=${2:-${OUT_DIR:-runs/fim_demo}}
[[ -n $DSEEK && -x $DSEEK ]] || { echo "usage: $0 DSEEK [OUT_DIR]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
STEPS=${STEPS:-600} SEQ_LEN=${SEQ_LEN:-256} BATCH=${BATCH:-8} EVAL_EVERY=${EVAL_EVERY:-150}
EVAL_COUNT=${EVAL_COUNT:-40} THREADS=${THREADS:-$(nproc)} VOCAB=${VOCAB:-2048} FORCE=${FORCE:-0}
[[ $FORCE == 1 ]] && rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

[[ -f $OUT_DIR/code/train.jsonl ]] || python3 "$HERE/fim_corpus.py" --out "$OUT_DIR/code"
[[ -f $OUT_DIR/tok/tokenizer.json ]] ||
  "$DSEEK" tokenizer train --input "$OUT_DIR/code/train.jsonl" --vocab-size "$VOCAB" --out "$OUT_DIR/tok"
[[ -f $OUT_DIR/data/index.json ]] ||
  "$DSEEK" data prepare --tokenizer "$OUT_DIR/tok" --input "$OUT_DIR/code/train.jsonl" \
    --fim-rate 0.5 --fim-spm-rate 0 --out "$OUT_DIR/data"

"$DSEEK" train --preset tiny --tokenizer "$OUT_DIR/tok" --data "$OUT_DIR/data" --out "$OUT_DIR/run" \
  --steps "$STEPS" --threads "$THREADS" --resume --set data.seq_len="$SEQ_LEN" \
  --set train.batch_size="$BATCH" --set checkpoint.interval="$EVAL_EVERY" --set checkpoint.keep_last=100 \
  --set eval.interval="$EVAL_EVERY" --set mtp.lambda=0 --set moe.bias_update_speed=0.01 2>&1 |
  tr '\r' '\n' | grep -v '^\s*$' | tail -n 2

echo "| step | FIM middle loss (nats/token) | exact infills | train val loss |" >"$OUT_DIR/fim_loss.md"
echo "| --- | --- | --- | --- |" >>"$OUT_DIR/fim_loss.md"
for ckpt in "$OUT_DIR"/run/checkpoints/step-*; do
  step=$((10#${ckpt##*step-}))
  model=$OUT_DIR/model-$step
  [[ -d $model ]] || "$DSEEK" export --run "$OUT_DIR/run" --checkpoint "$ckpt" --out "$model" >/dev/null
  line=$("$DSEEK" eval fim --model "$model" --input "$OUT_DIR/code/heldout.jsonl" \
    --count "$EVAL_COUNT" --seed 7 --json "$model/fim_eval.json")
  echo "$line"
  val=$(python3 -c "import json,sys; print(next((round(j['val_loss'],4) for j in map(json.loads, open(sys.argv[1])) if j['step']==$step and 'val_loss' in j), ''))" "$OUT_DIR/run/metrics.jsonl")
  python3 - "$model/fim_eval.json" "$step" "$val" >>"$OUT_DIR/fim_loss.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {r['middle_loss']:.3f} | {r['exact']}/{r['documents']} | {sys.argv[3]} |")
PY
done
cat "$OUT_DIR/fim_loss.md"

# Infill the body of a small function the model has not seen.
prefix=$'def is_even(n):\n    '
suffix=$'\n\n\ndef is_odd(n):\n    return not is_even(n)\n'
echo "== infill (greedy) between:"
printf '%s<HOLE>%s' "$prefix" "$suffix"
echo "== the model writes:"
"$DSEEK" generate --model "$model" --fim-prefix "$prefix" --fim-suffix "$suffix" --greedy -n 32
