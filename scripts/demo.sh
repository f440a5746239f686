#!/usr/bin/env bash
# dseek's main job end to end on an embedded default (no downloads): train a tiny
# DeepSeek-V3-style model (MLA, DeepSeekMoE with auxiliary-loss-free balancing, multi-token
# prediction) from raw text on the CPU, show that it learned, plot it, export it as a Hugging Face
# model and generate from it.
#   corpus:    the `fortunes` Debian package (/usr/share/games/fortunes, ~2.6 MB of English text,
#              documents separated by "%" lines), installed by scripts/setup.sh
#   tokenizer: a 2048-token byte-level BPE trained on that corpus (dseek tokenizer train)
#   model:     the `tiny` preset (docs/TRAINING.md), a few minutes on 2 cores
# Usage: bash scripts/demo.sh [WORK_DIR]   (default demo-run/; DSEEK_DEMO_STEPS overrides steps)
# Re-running continues the same run from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSEEK_TESTS=OFF -DDSEEK_BENCH=OFF >/dev/null
cmake --build build -j "$(nproc)" --target dseek
dseek=./build/dseek

work=${1:-demo-run}
steps=${DSEEK_DEMO_STEPS:-400}
mkdir -p "$work"
mapfile -t corpus < <(find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort)
if ((${#corpus[@]} == 0)); then
  echo "demo: no fortune files under /usr/share/games/fortunes (is the fortunes package installed?)" >&2
  exit 1
fi

echo "== 1. tokenizer: byte-level BPE on ${#corpus[@]} fortune files"
if [[ ! -f $work/tokenizer/tokenizer.json ]]; then
  $dseek tokenizer train --input "${corpus[@]}" --separator % --vocab-size 2048 --out "$work/tokenizer"
fi

echo "== 2. data: tokenized shards"
if [[ ! -f $work/data/index.json ]]; then
  $dseek data prepare --tokenizer "$work/tokenizer" --input "${corpus[@]}" --separator % --out "$work/data"
fi

echo "== 3. train: tiny DeepSeek-V3-style model, $steps steps"
resume=()
if [[ -f $work/run/checkpoints/latest ]]; then resume=(--resume); fi
$dseek train --preset tiny --tokenizer "$work/tokenizer" --data "$work/data" --out "$work/run" \
  --steps "$steps" --seq-len 64 --batch-size 8 --lr 3e-3 --seed 0 \
  --set moe.bias_update_speed=0.01 --set eval.interval=50 --set eval.sequences=64 \
  --set checkpoint.interval=100 "${resume[@]}"

echo "== 4. did it learn? (validation loss vs the unigram entropy of the data)"
python3 - "$work/run" <<'PY'
import json, sys
run = sys.argv[1]
info = json.load(open(f"{run}/run.json"))
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
val = [r for r in rows if "val_loss" in r]
h = info["unigram_entropy"]
first, last = val[0], val[-1]
print(f"unigram entropy of the data: {h:.3f} nats/token ({info['parameters']:,} parameters, "
      f"{info['train_tokens']:,} training tokens)")
print(f"validation loss: {first['val_loss']:.3f} at step {first['step']} -> {last['val_loss']:.3f} "
      f"at step {last['step']} ({h - last['val_loss']:.2f} nats below the unigram entropy)")
if "val_max_vio" in last:
    print(f"expert balance: MaxVio_global {last['val_max_vio']:.3f} (0 = perfectly balanced)")
if not last["val_loss"] < h - 1.0:
    sys.exit("demo: the validation loss did not fall 1 nat below the unigram entropy")
PY

echo "== 5. plots"
$dseek plot "$work/run"

echo "== 6. export as a Hugging Face model directory and generate"
$dseek export --run "$work/run" --out "$work/model"
for prompt in "A fool" "The computer"; do
  echo "--- prompt: $prompt"
  $dseek generate --model "$work/model" --prompt "$prompt" -n 48 --temperature 0.8 --top-p 0.95 --seed 1
done
echo
echo "demo: done. Curves: $work/run/loss.png, max_vio.png, expert_load.png; model: $work/model"
