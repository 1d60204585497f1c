#!/usr/bin/env bash
# Training throughput (tokens/s) of `enigma train` against an equivalent PyTorch CPU training step, for the nano
# and micro presets at batch 8 x seq 256 on 2 threads. Not a test: numbers depend on the machine and its load.
#
#   bash benches/train_vs_torch.sh            # needs `pip install torch` for the PyTorch side
#   STEPS=20 THREADS=2 bash benches/train_vs_torch.sh
#
# Both sides run a full step: forward, cross-entropy, backward, gradient clipping at 1.0, AdamW. enigma's figure
# is the median of its per-step tokens/s in train_log.jsonl after 2 warmup steps; PyTorch's the median step time
# after 2 warmup steps (benches/torch_train_step.py). Vocabulary 8000 (the presets' default).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-12}"
THREADS="${THREADS:-2}"
B=8
T=256
V=8000
DATA="${ENIGMA_SHARED:-../shared}/data/tinyshakespeare.txt"
cargo build --release -q -p enigma-cli
BIN="${CARGO_TARGET_DIR:-target}/release/enigma"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$BIN" tokenizer train --data "$DATA" --vocab-size "$V" -o "$WORK/tok.json" 2>/dev/null

printf '%-6s %14s %14s %8s\n' preset "enigma tok/s" "torch tok/s" ratio
for preset in nano micro; do
    "$BIN" train --preset "$preset" --data "$DATA" --tokenizer "$WORK/tok.json" --out "$WORK/$preset" \
        --batch-size "$B" --seq-len "$T" --steps "$STEPS" --eval-every 0 --checkpoint-every 0 \
        --threads "$THREADS" --quiet 2>/dev/null
    ours=$(python3 - "$WORK/$preset/train_log.jsonl" <<'PY'
import json, statistics, sys
rates = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1])][2:]
print(round(statistics.median(rates)))
PY
)
    if python3 -c 'import torch' 2>/dev/null; then
        theirs=$(python3 benches/torch_train_step.py "$preset" "$THREADS" "$B" "$T" "$V" "$STEPS" | awk '{print $3}')
        ratio=$(python3 -c "print(f'{$ours / $theirs:.2f}x')")
    else
        theirs="(no torch)"
        ratio="-"
    fi
    printf '%-6s %14s %14s %8s\n' "$preset" "$ours" "$theirs" "$ratio"
done
