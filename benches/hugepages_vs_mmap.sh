#!/usr/bin/env bash
# Decode speed with the model file read into transparent huge pages (the default on Linux,
# runtime-std/src/load.rs) against the same file mapped (`ENIGMA_MMAP=1`): decode streams every weight once per
# token, so the pages the weights sit in matter. A random-weight 110M llama2.c checkpoint as q8_0 (the shape
# docs/DESIGN.md states this on), 1 thread; each round runs both, back to back; medians over the rounds.
#
#   bash benches/hugepages_vs_mmap.sh     # ROUNDS=5 STEPS=128 SHAPE=110M DTYPE=q8_0 THREADS=1
#
# Shares target/compare (checkpoints, imported models) with benches/compare_candle.sh. Writes
# benches/results/hugepages_vs_mmap.md, which docs/DESIGN.md quotes; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
ROUNDS="${ROUNDS:-5}"
STEPS="${STEPS:-128}"
SHAPE="${SHAPE:-110M}"
DTYPE="${DTYPE:-q8_0}"
THREADS="${THREADS:-1}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"

random_checkpoints "$SHAPE"
enigma_binary
m="$WORK/r$SHAPE-$DTYPE.enigma"
random_model "$SHAPE" "$DTYPE" "$m"

results_begin hugepages_vs_mmap "Decode speed: weights in transparent huge pages against a mapped file" \
    "ROUNDS=$ROUNDS STEPS=$STEPS SHAPE=$SHAPE DTYPE=$DTYPE THREADS=$THREADS bash benches/hugepages_vs_mmap.sh"
thp=$(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo "not available")
results_line "\`enigma bench\` on a random-weight $SHAPE llama2.c checkpoint as $DTYPE ($(stat -c %s "$m") bytes), 1 prompt token, $STEPS generated tokens, $THREADS thread(s); \`huge pages\`: the default load, \`mmap\`: \`ENIGMA_MMAP=1\`; the two alternate within each round. Transparent huge pages on this machine: \`$thp\` (the copy asks for them with madvise). Medians over the rounds; ratio = huge pages / mmap."
results_line ""

raw="$WORK/hugepages_rounds.txt"
: >"$raw"
for r in $(seq 1 "$ROUNDS"); do
    for mode in hugepages mmap; do
        if [ "$mode" = mmap ]; then
            out=$(ENIGMA_MMAP=1 "$E" bench -m "$m" --threads "$THREADS" --prompt-tokens 1 --gen-tokens "$STEPS" --rounds 1 --json)
        else
            out=$(env -u ENIGMA_MMAP "$E" bench -m "$m" --threads "$THREADS" --prompt-tokens 1 --gen-tokens "$STEPS" --rounds 1 --json)
        fi
        tps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["gen_tokens_per_s"])' "$out")
        echo "round $r $mode $tps" | tee -a "$raw"
    done
done

summary=$(python3 - "$raw" "$SHAPE" "$DTYPE" "$THREADS" <<'PY'
import collections, statistics, sys
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    rates[f[2]].append(float(f[3]))
h, m = statistics.median(rates["hugepages"]), statistics.median(rates["mmap"])
print(f"{'shape':>6} {'dtype':>5} {'thr':>3} {'huge pages tok/s':>17} {'mmap tok/s':>11} {'ratio':>6}  (medians of {len(rates['mmap'])} rounds)")
print(f"{sys.argv[2]:>6} {sys.argv[3]:>5} {sys.argv[4]:>3} {h:>17.1f} {m:>11.1f} {h / m:>6.2f}")
PY
)
printf '%s\n' "$summary"
printf '%s\n' "$summary" | results_block
results_line "Every round (tok/s):"
results_line ""
results_block <"$raw"
results_end
