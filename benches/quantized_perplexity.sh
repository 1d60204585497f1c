#!/usr/bin/env bash
# What quantization costs in quality: the perplexity of stories260K (llama2.c's, from ../shared) as f32, q8_0
# and q4_0 on the TinyStories sample, with `enigma eval`. q4_0 keeps the embedding/classifier at q8_0
# (runtime-std/src/quantize.rs); docs/DESIGN.md quotes the result. The figures are exact for a given commit:
# they do not depend on the machine's load.
#
#   bash benches/quantized_perplexity.sh
#
# Writes benches/results/quantized_perplexity.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
DATA="$SHARED/data/tinystories_sample_197k.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
E="${ENIGMA_BIN:-target/release/enigma}"
[ -n "${ENIGMA_BIN:-}" ] || cargo build --release -p enigma-cli

results_begin quantized_perplexity "Perplexity of stories260K by weight dtype" "bash benches/quantized_perplexity.sh"
results_line "\`enigma eval\` of llama2.c's stories260K (imported from \`../shared/models/stories260K.bin\`) over \`../shared/data/tinystories_sample_197k.txt\`, windows of the model's context; q4_0 keeps the embedding/classifier at q8_0. Change = perplexity / f32's - 1."
results_line ""
table="$WORK/table.txt"
printf '%-6s %12s %10s\n' dtype perplexity "vs f32" | tee "$table"
base=""
for dtype in f32 q8_0 q4_0; do
    "$E" import llama2c "$SHARED/models/stories260K.bin" --tokenizer "$SHARED/models/tok512.bin" \
        -o "$WORK/s-$dtype.enigma" --quantize "$dtype" 2>/dev/null
    ppl=$("$E" eval -m "$WORK/s-$dtype.enigma" --data "$DATA" 2>/dev/null | awk '{print $2}')
    [ -n "$base" ] || base="$ppl"
    change=$(python3 -c "print(f'{100 * ($ppl / $base - 1):+.2f}%')")
    printf '%-6s %12s %10s\n' "$dtype" "$ppl" "$change" | tee -a "$table"
done
results_block <"$table"
results_end
