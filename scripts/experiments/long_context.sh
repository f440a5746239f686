#!/usr/bin/env bash
# Long-context extension as in DeepSeek-Coder-V2 (continued training with YaRN rope scaling, in
# stages), at toy scale, with passkey retrieval as the evidence:
#   data    a BPE tokenizer and passkey documents (data/passkey.h) mixed with ordinary text (the
#           Python standard library's functions, scripts/fim_corpus.py), per stage's length
#   stage 0 the tiny preset trained from scratch at SEQ0 tokens (model.max_position_embeddings =
#           SEQ0, no rope scaling) until it retrieves the key at that length: chunks of CHUNK0
#           steps (constant lr after warm-up), each followed by a passkey check at SEQ0 (10
#           trials), until the accuracy reaches TARGET0 or STEPS0 steps are done
#   stage 1 model.init_from stage 0, YaRN factor FACTOR1 over original SEQ0, SEQ1-token sequences,
#           STEPS1 steps (fresh optimizer)
#   stage 2 (STEPS2 > 0) init_from stage 1, YaRN factor FACTOR2, SEQ2-token sequences
#   eval    `dseek eval passkey` of every stage's export at LENGTHS, a table (results.md) and a
#           plot (passkey.png / .svg) of accuracy against length
#
# Usage: long_context.sh DSEEK [OUT_DIR]      (or the environment variables DSEEK, OUT_DIR)
# Settings from the environment (defaults in brackets):
#   THREADS [nproc]  SEQ0 [128]  STEPS0 [1600]  CHUNK0 [200]  TARGET0 [0.8]  BATCH0 [16]  COUNT0 [6000]
#   SEQ1 [512]  FACTOR1 [4]  STEPS1 [200]  BATCH1 [4]  COUNT1 [1500]
#   SEQ2 [1024] FACTOR2 [8]  STEPS2 [0]    BATCH2 [2]  COUNT2 [800]
#   LR [3e-3] (stage 0)  LR_EXT [1e-3] (later stages)  MSCALE_ALL_DIM [0.707] (V2's value)
#   LENGTHS [128,256,512,1024,2048]  TRIALS [20]  SEED [0]  FORCE [0] (1: start afresh)
#   STAGE0_SECONDS [0]: no new stage-0 chunk after this long; STAGE1_SECONDS [0]: stop stage 1's
#   training (SIGTERM: a checkpoint, then the export) after this long (0: no limit)
#   PREPARE_ONLY [0] (1: stop after the tokenizer and data; they need python3 and the stdlib
#   sources, training does not, so they can be made here and carried to another machine)
# Speed: on the GPU hosts' Xeon first `export OPENBLAS_CORETYPE=Cooperlake` (see
# balance_and_mtp.sh).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" >&2; exit 2; }
die() { echo "long_context: $*" >&2; exit 1; }
[[ ${1:-} == -h || ${1:-} == --help ]] && usage
DSEEK=${1:-${DSEEK:-}}
OUT_DIR=${2:-${OUT_DIR:-runs/long_context}}
[[ -n $DSEEK ]] || usage
[[ -x $DSEEK ]] || die "$DSEEK: not an executable (the dseek binary)"
HERE=$(cd "$(dirname "$0")/.." && pwd)

THREADS=${THREADS:-$(nproc)}
SEQ0=${SEQ0:-128} STEPS0=${STEPS0:-1600} CHUNK0=${CHUNK0:-200} TARGET0=${TARGET0:-0.8}
BATCH0=${BATCH0:-16} COUNT0=${COUNT0:-6000} PREPARE_ONLY=${PREPARE_ONLY:-0}
STAGE0_SECONDS=${STAGE0_SECONDS:-0} STAGE1_SECONDS=${STAGE1_SECONDS:-0}
SEQ1=${SEQ1:-512} FACTOR1=${FACTOR1:-4} STEPS1=${STEPS1:-200} BATCH1=${BATCH1:-4} COUNT1=${COUNT1:-1500}
SEQ2=${SEQ2:-1024} FACTOR2=${FACTOR2:-8} STEPS2=${STEPS2:-0} BATCH2=${BATCH2:-2} COUNT2=${COUNT2:-800}
LR=${LR:-3e-3} LR_EXT=${LR_EXT:-1e-3} MSCALE_ALL_DIM=${MSCALE_ALL_DIM:-0.707}
LENGTHS=${LENGTHS:-128,256,512,1024,2048} TRIALS=${TRIALS:-20} SEED=${SEED:-0} FORCE=${FORCE:-0}
for v in THREADS SEQ0 STEPS0 CHUNK0 BATCH0 COUNT0 SEQ1 STEPS1 BATCH1 COUNT1 SEQ2 STEPS2 BATCH2 COUNT2 TRIALS SEED; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v=${!v}: need a non-negative integer"
done
[[ $FORCE == 1 ]] && rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

# Ordinary text, and the tokenizer (trained on that text plus the passkey sentences, so the filler
# costs a few tokens per word rather than bytes).
if [[ ! -f $OUT_DIR/tok/tokenizer.json ]]; then
  python3 "$HERE/fim_corpus.py" --out "$OUT_DIR/text"
  for i in $(seq 200); do
    echo " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    echo " The pass key is $((10000 + RANDOM % 90000)). Remember it. What is the pass key? The pass key is"
  done >"$OUT_DIR/passkey_sentences.txt"
  # Digits one per token, as DeepSeek LLM's and Coder's pre-tokenizers split them (V3 groups up to
  # three): a key is then five tokens of a ten-token alphabet that every key trains, rather than
  # rare three-digit tokens that a tiny model must learn to copy one by one.
  python3 - "$HERE/../tests/fixtures/tokenizer/v3_pre_tokenizer.json" "$OUT_DIR/digits_pre_tokenizer.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
split = doc["pre_tokenizer"]["pretokenizers"][0]
assert split["pattern"]["Regex"] == "\\p{N}{1,3}", split
split["pattern"]["Regex"] = "\\p{N}"
doc["_source"] = "DeepSeek-V3's pre_tokenizer with digits split one by one (DeepSeek LLM / Coder)"
json.dump(doc, open(sys.argv[2], "w"), ensure_ascii=False, indent=1)
PY
  "$DSEEK" tokenizer train --input "$OUT_DIR/text/train.jsonl" "$OUT_DIR/passkey_sentences.txt" \
    --pre-tokenizer "$OUT_DIR/digits_pre_tokenizer.json" --vocab-size 1024 --out "$OUT_DIR/tok"
fi

make_data() {  # stage N's passkey documents (+ text), prompts of SEQ/4 .. SEQ-8 tokens
  local n=$1 seq=$2 count=$3
  [[ -f $OUT_DIR/data$n/index.json ]] ||
    "$DSEEK" data passkey --tokenizer "$OUT_DIR/tok" --length $((seq - 8)) --min-length $((seq / 4)) \
      --count "$count" --text "$OUT_DIR/text/train.jsonl" --seed "$((SEED + n))" --out "$OUT_DIR/data$n"
}
make_data 0 "$SEQ0" "$COUNT0"
make_data 1 "$SEQ1" "$COUNT1"
(( STEPS2 > 0 )) && make_data 2 "$SEQ2" "$COUNT2"
[[ $PREPARE_ONLY == 1 ]] && exit 0

# train N STEPS SEQ BATCH LR [dseek train args]: run N up to STEPS steps (resuming), then export.
train() {
  local n=$1 steps=$2 seq=$3 batch=$4 lr=$5 seconds=$6; shift 6
  timeout -s TERM -k 60 "$seconds" "$DSEEK" train --preset tiny --tokenizer "$OUT_DIR/tok" --data "$OUT_DIR/data$n" \
    --out "$OUT_DIR/stage$n" --steps "$steps" --threads "$THREADS" --resume \
    --set data.seq_len="$seq" --set train.batch_size="$batch" --set optim.lr="$lr" \
    --set optim.schedule=constant --set optim.warmup_steps=50 --set mtp.lambda=0 \
    --set train.seed="$SEED" --set eval.interval=100 --set eval.sequences=16 \
    --set checkpoint.interval=100 --set checkpoint.keep_last=2 --set moe.bias_update_speed=0.01 \
    "$@" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 1 || true
  rm -rf "$OUT_DIR/model$n"
  "$DSEEK" export --run "$OUT_DIR/stage$n" --out "$OUT_DIR/model$n" >/dev/null
}
evaluate() {
  "$DSEEK" eval passkey --model "$OUT_DIR/model$1" --lengths "$LENGTHS" --trials "$TRIALS" \
    --seed 1234 --json "$OUT_DIR/passkey$1.json" | tee "$OUT_DIR/passkey$1.md"
}

echo "== stage 0: from scratch at $SEQ0 tokens, until it retrieves at $SEQ0"
start0=$SECONDS
for ((done0 = CHUNK0; ; done0 += CHUNK0)); do
  (( done0 > STEPS0 )) && done0=$STEPS0
  train 0 "$done0" "$SEQ0" "$BATCH0" "$LR" 0 --set model.max_position_embeddings="$SEQ0"
  acc=$("$DSEEK" eval passkey --model "$OUT_DIR/model0" --lengths "$SEQ0" --trials 10 --seed 99 |
    awk -F'|' 'NR == 3 { gsub(/ /, "", $3); print $3 }')
  echo "stage 0 step $done0: passkey accuracy at $SEQ0 = $acc"
  awk -v a="$acc" -v t="$TARGET0" 'BEGIN { exit !(a >= t) }' && break
  (( done0 >= STEPS0 )) && break
  (( STAGE0_SECONDS > 0 && SECONDS - start0 >= STAGE0_SECONDS )) && break
done
evaluate 0
echo "== stage 1: YaRN x$FACTOR1 at $SEQ1 tokens, from stage 0"
train 1 "$STEPS1" "$SEQ1" "$BATCH1" "$LR_EXT" "$STAGE1_SECONDS" --set model.init_from="$OUT_DIR/stage0" \
  --set model.rope_scaling.type=yarn --set model.rope_scaling.factor="$FACTOR1" \
  --set model.rope_scaling.original_max_position_embeddings="$SEQ0" \
  --set model.rope_scaling.mscale=$MSCALE_ALL_DIM --set model.rope_scaling.mscale_all_dim=$MSCALE_ALL_DIM
evaluate 1
inputs=(--input "$OUT_DIR/passkey0.json=stage 0: $SEQ0 tokens, no scaling"
        --input "$OUT_DIR/passkey1.json=stage 1: YaRN x$FACTOR1, $SEQ1 tokens")
if (( STEPS2 > 0 )); then
  echo "== stage 2: YaRN x$FACTOR2 at $SEQ2 tokens, from stage 1"
  train 2 "$STEPS2" "$SEQ2" "$BATCH2" "$LR_EXT" 0 --set model.init_from="$OUT_DIR/stage1" \
    --set model.rope_scaling.factor="$FACTOR2"
  evaluate 2
  inputs+=(--input "$OUT_DIR/passkey2.json=stage 2: YaRN x$FACTOR2, $SEQ2 tokens")
fi
"$DSEEK" eval passkey-plot "${inputs[@]}" --out "$OUT_DIR/passkey.png"
"$DSEEK" eval passkey-plot "${inputs[@]}" --out "$OUT_DIR/passkey.svg"
python3 - "$OUT_DIR" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
reports = sorted(out.glob("passkey[0-9].json"))
rows = [json.loads(p.read_text()) for p in reports]
lengths = [r["length"] for r in rows[0]["lengths"]]
lines = ["| model | " + " | ".join(str(l) for l in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
for p, r in zip(reports, rows):
    cfg = json.loads((out / ("model" + p.stem[-1]) / "config.json").read_text())
    rope = cfg.get("rope_scaling") or {}
    name = f"stage {p.stem[-1]} (ctx {cfg['max_position_embeddings']}" + (f", YaRN x{rope['factor']:g}" if rope else "") + ")"
    lines.append(f"| {name} | " + " | ".join(f"{x['accuracy']:.2f}" for x in r["lengths"]) + " |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
