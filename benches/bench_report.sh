#!/usr/bin/env bash
# What `enigma bench` reports for one model shape stored two ways: a random-weight llama2.c checkpoint of
# stories15M's shape as f32 (about 61 MB of weights read per token, more than most last-level caches: decode is
# bound by DRAM bandwidth) and as q8_0 (about 16 MB, which a 32 MiB L3 holds: the DRAM bound does not apply, and
# the report says so instead of a percentage above 100; its prefill runs int8 products, which the f32 FMA peak does
# not bound either, and the report says that too).
#
#   bash benches/bench_report.sh     # SHAPE=15M THREADS=1 ROUNDS=5
#
# Shares target/compare (checkpoints, imported models) with benches/compare_candle.sh. Writes
# benches/results/bench_report.md, which README.md quotes; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
SHAPE="${SHAPE:-15M}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-5}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"

random_checkpoints "$SHAPE"
enigma_binary
for dtype in f32 q8_0; do
    random_model "$SHAPE" "$dtype" "$WORK/r$SHAPE-$dtype.enigma"
done

results_begin bench_report "enigma bench on a model larger and a model smaller than the last-level cache" \
    "SHAPE=$SHAPE THREADS=$THREADS ROUNDS=$ROUNDS bash benches/bench_report.sh"
results_line "Random-weight llama2.c checkpoints of the $SHAPE shape (\`gen_llama2c_ckpt.py\`), imported as f32 and as q8_0; \`enigma bench\` on each, as it printed."
results_line ""
for dtype in f32 q8_0; do
    echo "\$ enigma bench -m r$SHAPE-$dtype.enigma --threads $THREADS --rounds $ROUNDS"
    "$E" bench -m "$WORK/r$SHAPE-$dtype.enigma" --threads "$THREADS" --rounds "$ROUNDS"
done | tee /dev/stderr | results_block
results_end
