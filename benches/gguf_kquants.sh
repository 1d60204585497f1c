#!/usr/bin/env bash
# Decode speed of a Q4_K_M-style GGUF file (q4_K, q6_K for attn_v / ffn_down on llama.cpp's "more bits"
# layers and for the classifier) against the same random-weight model imported as q4_0 and as q8_0. The GGUF
# runs as `enigma run -m x.gguf` runs it: tensors all in q4_K or all in q6_K are multiplied natively, those
# whose layers mix the two (attn_v, ffn_down) are widened to q8_0 on load (docs/FORMAT.md, section 11), so
# this shows what a Q4_K_M file costs here. The 110M shape by default:
# its rows (768, 2048) are whole super-blocks of 256, so every matrix is a k-quant (15M's 288 are not, and fall
# back to q8_0 as llama.cpp does). Each round runs the three back to back; medians over the rounds.
#
#   bash benches/gguf_kquants.sh     # ROUNDS=3 STEPS=64 SHAPE=110M THREADS=1
#
# Shares target/compare (checkpoints, imported models) with the other bench scripts. Needs numpy and gguf
# (pip). Writes benches/results/gguf_kquants.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
ROUNDS="${ROUNDS:-3}"
STEPS="${STEPS:-64}"
SHAPE="${SHAPE:-110M}"
THREADS="${THREADS:-1}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"
python3 -c 'import numpy, gguf' 2>/dev/null || pip install --quiet numpy "gguf==0.19.0"

random_checkpoints "$SHAPE"
enigma_binary
for d in q4_0 q8_0; do random_model "$SHAPE" "$d" "$WORK/r$SHAPE-$d.enigma"; done
k="$WORK/r$SHAPE-q4_k_m.gguf"
[ -f "$k" ] || python3 benches/llama2c_to_kquants_gguf.py "$WORK/models/r$SHAPE.bin" "$SHARED/models/tokenizer.bin" "$k"
mix=$("$E" info "$k" | sed -n 's/^gguf tensors: //p')

results_begin gguf_kquants "Decode speed: a Q4_K_M-style GGUF against q4_0 and q8_0" \
    "ROUNDS=$ROUNDS STEPS=$STEPS SHAPE=$SHAPE THREADS=$THREADS bash benches/gguf_kquants.sh"
results_line "\`enigma bench\` on a random-weight $SHAPE llama2.c checkpoint: \`q4_k_m\` is the GGUF file written by benches/llama2c_to_kquants_gguf.py ($(stat -c %s "$k") bytes; tensors: $mix), run directly; \`q4_0\` ($(stat -c %s "$WORK/r$SHAPE-q4_0.enigma") bytes) and \`q8_0\` ($(stat -c %s "$WORK/r$SHAPE-q8_0.enigma") bytes) are \`enigma import llama2c --quantize\` of the same checkpoint. 1 prompt token, $STEPS generated tokens, $THREADS thread(s), medians over the rounds. The GGUF's q4_K and q6_K tensors are multiplied as they are (by the best kernel tier of this CPU); attn_v and ffn_down, whose layers mix the two, are held as q8_0."
results_line ""

raw="$WORK/gguf_kquants_rounds.txt"
: >"$raw"
for r in $(seq 1 "$ROUNDS"); do
    for m in q4_k_m q4_0 q8_0; do
        f="$WORK/r$SHAPE-$m.enigma"
        [ "$m" = q4_k_m ] && f="$k"
        out=$("$E" bench -m "$f" --threads "$THREADS" --prompt-tokens 1 --gen-tokens "$STEPS" --rounds 1 --json)
        tps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["gen_tokens_per_s"])' "$out")
        echo "round $r $m $tps" | tee -a "$raw"
    done
done

summary=$(python3 - "$raw" "$SHAPE" "$THREADS" <<'PY'
import collections, statistics, sys
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rates[f[2]].append(float(f[3]))
n = len(rates["q8_0"])
print(f"{'shape':>6} {'thr':>3} {'weights':>8} {'tok/s':>8} {'vs q8_0':>8}  (medians of {n} rounds)")
q8 = statistics.median(rates["q8_0"])
for m in ("q4_k_m", "q4_0", "q8_0"):
    v = statistics.median(rates[m])
    print(f"{sys.argv[2]:>6} {sys.argv[3]:>3} {m:>8} {v:>8.1f} {v / q8:>8.2f}")
PY
)
printf '%s\n' "$summary"
printf '%s\n' "$summary" | results_block
results_line "Every round (tok/s):"
results_line ""
results_block <"$raw"
results_end
