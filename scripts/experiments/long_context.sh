#!/usr/bin/env bash
# Long-context extension as in DeepSeek-Coder-V2 (continued training with YaRN rope scaling, in
# stages), at toy scale, with passkey retrieval as the evidence:
#   data     a BPE tokenizer (digits one per token) and, per stage length, passkey documents
#            (data/passkey.h): token shards mixed with ordinary text (the Python standard library's
#            functions, scripts/fim_corpus.py) for language modelling, and packed rows with one
#            document per segment and the loss on the answer only (`dseek data passkey --rows
#            --answer-only`) for retrieval
#   stage 0  the tiny preset from scratch at SEQ0 tokens (max_position_embeddings = SEQ0, no rope
#            scaling): LM0 steps of language modelling on the shards, then STEPS0 steps of
#            retrieval on the rows. (On shuffled shards alone a model this small never learned to
#            copy the key in 3000 steps: the answer is 5 of ~2000 tokens of a batch and a window
#            holds several needles. On the rows it learns within a few hundred steps.)
#   stage 1  model.init_from stage 0, YaRN factor FACTOR1 over original SEQ0, retrieval rows of
#            SEQ1 tokens, STEPS1 steps (fresh optimizer)
#   control  (CONTROL=1) the same continued training at SEQ1 without rope scaling, to separate
#            what YaRN does from what training on longer rows does
#   stage 2  (STEPS2 > 0) init_from stage 1, YaRN factor FACTOR2, SEQ2-token rows
#   eval     `dseek eval passkey` of every stage's export at LENGTHS, a table (results.md) and a
#            plot (passkey.png / .svg) of accuracy against length
#
# Usage: long_context.sh DSEEK [OUT_DIR]      (or the environment variables DSEEK, OUT_DIR)
# Settings from the environment (defaults in brackets):
#   THREADS [nproc]  SEQ0 [128]  LM0 [600]  STEPS0 [2000]  BATCH0 [16]  COUNT0 [20000]
#   SEQ1 [512]  FACTOR1 [4]  STEPS1 [400]  BATCH1 [4]  COUNT1 [4000]  CONTROL [1]
#   SEQ2 [1024] FACTOR2 [8]  STEPS2 [0]    BATCH2 [2]  COUNT2 [2000]
#   LR [3e-3] (language modelling)  LR_RET [1e-3] (retrieval stages)  MSCALE_ALL_DIM [0.707]
#   LENGTHS [128,256,512,1024,2048]  TRIALS [20]  SEED [0]  FORCE [0] (1: start afresh)
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
SEQ0=${SEQ0:-128} LM0=${LM0:-600} STEPS0=${STEPS0:-2000} BATCH0=${BATCH0:-16} COUNT0=${COUNT0:-20000}
SEQ1=${SEQ1:-512} FACTOR1=${FACTOR1:-4} STEPS1=${STEPS1:-400} BATCH1=${BATCH1:-4} COUNT1=${COUNT1:-4000}
SEQ2=${SEQ2:-1024} FACTOR2=${FACTOR2:-8} STEPS2=${STEPS2:-0} BATCH2=${BATCH2:-2} COUNT2=${COUNT2:-2000}
CONTROL=${CONTROL:-1} PREPARE_ONLY=${PREPARE_ONLY:-0}
LR=${LR:-3e-3} LR_RET=${LR_RET:-1e-3} MSCALE_ALL_DIM=${MSCALE_ALL_DIM:-0.707}
LENGTHS=${LENGTHS:-128,256,512,1024,2048} TRIALS=${TRIALS:-20} SEED=${SEED:-0} FORCE=${FORCE:-0}
for v in THREADS SEQ0 LM0 STEPS0 BATCH0 COUNT0 SEQ1 STEPS1 BATCH1 COUNT1 SEQ2 STEPS2 BATCH2 COUNT2 TRIALS SEED; do
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

make_shards() {  # language-modelling shards at SEQ tokens: passkey documents + text
  local n=$1 seq=$2
  [[ -f $OUT_DIR/lm$n/index.json ]] ||
    "$DSEEK" data passkey --tokenizer "$OUT_DIR/tok" --length $((seq - 8)) --min-length $((seq / 4)) \
      --count 6000 --text "$OUT_DIR/text/train.jsonl" --seed "$((SEED + 100 + n))" --out "$OUT_DIR/lm$n"
}
make_rows() {  # retrieval rows of SEQ positions: prompts of SEQ/4 .. SEQ-16 tokens, answer-only loss
  local n=$1 seq=$2 count=$3
  [[ -f $OUT_DIR/rows$n/index.json ]] ||
    "$DSEEK" data passkey --tokenizer "$OUT_DIR/tok" --length $((seq - 16)) --min-length $((seq / 4)) \
      --count "$count" --rows "$seq" --answer-only --seed "$((SEED + n))" --out "$OUT_DIR/rows$n"
}
make_shards 0 "$SEQ0"
make_rows 0 "$SEQ0" "$COUNT0"
make_rows 1 "$SEQ1" "$COUNT1"
(( STEPS2 > 0 )) && make_rows 2 "$SEQ2" "$COUNT2"
[[ $PREPARE_ONLY == 1 ]] && exit 0

# train NAME DATA STEPS SEQ BATCH LR [dseek train args]: run NAME up to STEPS steps (resuming),
# then export it to model_NAME.
train() {
  local name=$1 data=$2 steps=$3 seq=$4 batch=$5 lr=$6; shift 6
  "$DSEEK" train --preset tiny --tokenizer "$OUT_DIR/tok" --data "$OUT_DIR/$data" \
    --out "$OUT_DIR/run_$name" --steps "$steps" --threads "$THREADS" --resume \
    --set data.seq_len="$seq" --set train.batch_size="$batch" --set optim.lr="$lr" \
    --set optim.schedule=constant --set optim.warmup_steps=20 --set mtp.lambda=0 \
    --set train.seed="$SEED" --set eval.interval=100 --set eval.sequences=16 \
    --set checkpoint.interval=100 --set checkpoint.keep_last=2 --set moe.bias_update_speed=0.01 \
    "$@" 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 1 || true
  rm -rf "$OUT_DIR/model_$name"
  "$DSEEK" export --run "$OUT_DIR/run_$name" --out "$OUT_DIR/model_$name" >/dev/null
}
evaluate() {
  "$DSEEK" eval passkey --model "$OUT_DIR/model_$1" --lengths "$LENGTHS" --trials "$TRIALS" \
    --seed 1234 --json "$OUT_DIR/passkey_$1.json" | tee "$OUT_DIR/passkey_$1.md"
}
yarn() {  # dseek train settings for YaRN factor $1 over original length $2
  echo --set model.rope_scaling.type=yarn --set model.rope_scaling.factor="$1" \
    --set model.rope_scaling.original_max_position_embeddings="$2" \
    --set model.rope_scaling.mscale=$MSCALE_ALL_DIM --set model.rope_scaling.mscale_all_dim=$MSCALE_ALL_DIM
}

echo "== stage 0: from scratch at $SEQ0 tokens: $LM0 steps of language modelling, then $STEPS0 of retrieval"
train lm0 lm0 "$LM0" "$SEQ0" "$BATCH0" "$LR" --set model.max_position_embeddings="$SEQ0"
train stage0 rows0 "$STEPS0" "$SEQ0" "$BATCH0" "$LR_RET" --set train.task=sft \
  --set model.init_from="$OUT_DIR/run_lm0" --set model.max_position_embeddings="$SEQ0"
evaluate stage0
inputs=(--input "$OUT_DIR/passkey_stage0.json=stage 0: $SEQ0 tokens, no scaling")
echo "== stage 1: YaRN x$FACTOR1 at $SEQ1 tokens, from stage 0"
# shellcheck disable=SC2046
train stage1 rows1 "$STEPS1" "$SEQ1" "$BATCH1" "$LR_RET" --set train.task=sft \
  --set model.init_from="$OUT_DIR/run_stage0" $(yarn "$FACTOR1" "$SEQ0")
evaluate stage1
inputs+=(--input "$OUT_DIR/passkey_stage1.json=stage 1: YaRN x$FACTOR1, $SEQ1 tokens")
if [[ $CONTROL == 1 ]]; then
  echo "== control: $SEQ1 tokens without rope scaling, from stage 0"
  train control rows1 "$STEPS1" "$SEQ1" "$BATCH1" "$LR_RET" --set train.task=sft \
    --set model.init_from="$OUT_DIR/run_stage0" --set model.max_position_embeddings="$SEQ1"
  evaluate control
  inputs+=(--input "$OUT_DIR/passkey_control.json=control: $SEQ1 tokens, no scaling")
fi
if (( STEPS2 > 0 )); then
  echo "== stage 2: YaRN x$FACTOR2 at $SEQ2 tokens, from stage 1"
  # shellcheck disable=SC2046
  train stage2 rows2 "$STEPS2" "$SEQ2" "$BATCH2" "$LR_RET" --set train.task=sft \
    --set model.init_from="$OUT_DIR/run_stage1" $(yarn "$FACTOR2" "$SEQ0")
  evaluate stage2
  inputs+=(--input "$OUT_DIR/passkey_stage2.json=stage 2: YaRN x$FACTOR2, $SEQ2 tokens")
fi
"$DSEEK" eval passkey-plot "${inputs[@]}" --out "$OUT_DIR/passkey.png"
"$DSEEK" eval passkey-plot "${inputs[@]}" --out "$OUT_DIR/passkey.svg"
python3 - "$OUT_DIR" stage0 stage1 control stage2 <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
names = [n for n in sys.argv[2:] if (out / f"passkey_{n}.json").exists()]
rows = [json.loads((out / f"passkey_{n}.json").read_text()) for n in names]
lengths = [r["length"] for r in rows[0]["lengths"]]
lines = ["| model | " + " | ".join(str(l) for l in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
for n, r in zip(names, rows):
    cfg = json.loads((out / f"model_{n}" / "config.json").read_text())
    rope = cfg.get("rope_scaling") or {}
    label = f"{n} (ctx {cfg['max_position_embeddings']}" + (f", YaRN x{rope['factor']:g}" if rope else ", no scaling") + ")"
    lines.append(f"| {label} | " + " | ".join(f"{x['accuracy']:.2f}" for x in r["lengths"]) + " |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
