#!/usr/bin/env bash
# Training throughput (tokens/s) of `enigma train` against an equivalent PyTorch CPU training step, for the nano
# and micro presets at batch 8 x seq 256, on 1 and 2 threads. Not a test: numbers depend on the machine and its
# load.
#
#   bash benches/train_vs_torch.sh            # needs `pip install torch` for the PyTorch side
#   STEPS=20 THREADS="2" bash benches/train_vs_torch.sh
#
# Both sides run a full step: forward, cross-entropy, backward, gradient clipping at 1.0, AdamW. enigma's figure
# is the median of its per-step tokens/s in train_log.jsonl after 2 warmup steps; PyTorch's the median step time
# after 2 warmup steps (benches/torch_train_step.py). Vocabulary 8000 (the presets' default). For each thread
# count the two engines run one after the other, preset by preset, so a noisy moment mostly hits one row.
#
# Writes benches/results/train_vs_torch.md (commit, CPU, date, the command with every knob, the table), which
# docs/TRAINING.md quotes; RESULTS_NOTE="..." adds a note line. Without torch the PyTorch column says so.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
STEPS="${STEPS:-12}"
THREADS="${THREADS:-1 2}"
B=8
T=256
V=8000
DATA="${ENIGMA_SHARED:-../shared}/data/tinyshakespeare.txt"
cargo build --release -q -p enigma-cli
BIN="${CARGO_TARGET_DIR:-target}/release/enigma"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$BIN" tokenizer train --data "$DATA" --vocab-size "$V" -o "$WORK/tok.json" 2>/dev/null

results_begin train_vs_torch "Training throughput: enigma train against PyTorch" \
    "STEPS=$STEPS THREADS=\"$THREADS\" bash benches/train_vs_torch.sh"
if torch_version=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    peer="PyTorch $torch_version (CPU, float32, benches/torch_train_step.py)"
else
    peer="PyTorch: not installed on this machine (\`python3 -c 'import torch'\` failed), so no PyTorch figures"
fi
results_line "Full training steps (forward, cross-entropy, backward, clipping, AdamW) at batch $B x seq $T, vocabulary $V, $STEPS steps per run, medians after 2 warmup steps; tokens/s. Peer: $peer. Ratio = enigma / PyTorch."
results_line ""
table="$WORK/table.txt"
printf '%-6s %7s %14s %14s %8s\n' preset threads "enigma tok/s" "torch tok/s" ratio | tee "$table"
for threads in $THREADS; do
    for preset in nano micro; do
        out="$WORK/$preset-$threads"
        "$BIN" train --preset "$preset" --data "$DATA" --tokenizer "$WORK/tok.json" --out "$out" \
            --batch-size "$B" --seq-len "$T" --steps "$STEPS" --eval-every 0 --checkpoint-every 0 \
            --threads "$threads" --quiet 2>/dev/null
        ours=$(python3 - "$out/train_log.jsonl" <<'PY'
import json, statistics, sys
rates = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1])][2:]
print(round(statistics.median(rates)))
PY
)
        if [ -n "${torch_version:-}" ]; then
            theirs=$(python3 benches/torch_train_step.py "$preset" "$threads" "$B" "$T" "$V" "$STEPS" | awk '{print $3}')
            ratio=$(python3 -c "print(f'{$ours / $theirs:.2f}x')")
        else
            theirs="(no torch)"
            ratio="-"
        fi
        printf '%-6s %7s %14s %14s %8s\n' "$preset" "$threads" "$ours" "$theirs" "$ratio" | tee -a "$table"
    done
done
results_block <"$table"
results_end
