#!/usr/bin/env bash
# dseek's main job, end to end on an embedded default (no downloads). Until the training issue
# lands, this builds dseek, inspects a committed tiny DeepSeek-V3 checkpoint (made with
# transformers by scripts/fixtures/make_model_fixtures.py), checks its logits against the
# transformers reference, and generates from it with the latent KV cache.
# Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSEEK_TESTS=OFF >/dev/null
cmake --build build -j "$(nproc)" --target dseek

model=tests/fixtures/models/v3_noaux
echo "== dseek info --model $model"
./build/dseek info --model "$model"

echo
echo "== logits vs the transformers reference"
ids=$(python3 -c "import json;print(','.join(map(str,json.load(open('$model/reference.json'))['input_ids'])))")
./build/dseek logits --model "$model" --ids "$ids" --out /tmp/dseek_demo_logits.bin
python3 - "$model" <<'PY'
import json, struct, sys
d = sys.argv[1]
ref = json.load(open(f"{d}/reference.json"))
def load(p):
    b = open(p, "rb").read()
    return struct.unpack(f"<{len(b)//4}f", b)
a, b = load("/tmp/dseek_demo_logits.bin"), load(f"{d}/{ref['logits_file']}")
print(f"max |dseek - transformers| = {max(abs(x - y) for x, y in zip(a, b)):.3e} over {len(a)} logits")
PY

echo
echo "== greedy generation with the compressed-latent KV cache"
prompt=$(python3 -c "import json;print(','.join(map(str,json.load(open('$model/reference.json'))['greedy_prompt'])))")
./build/dseek generate --model "$model" --ids "$prompt" -n 24 --greedy --print-ids
echo "(transformers greedy: $(python3 -c "import json;print(' '.join(map(str,json.load(open('$model/reference.json'))['greedy_continuation'])))"))"
