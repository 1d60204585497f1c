#!/usr/bin/env bash
# Batched decode on a random-weight 110M llama2.c checkpoint as q8_0: what a step of 1, 8 and 32 sequences'
# decode rows costs (`Transformer::step` over a paged cache, every row's logits), and the batch of one through
# the batched engine (`Batcher`, what `inference` serves with) against `enigma bench`'s single-sequence loop
# (a `HostSession`, as `enigma run` decodes). Rows and the two single-sequence paths alternate within each
# round (their order rotated every round); figures are medians over the rounds.
#
#   bash benches/batch_decode.sh      # ROUNDS=5 STEPS=64 SHAPE=110M DTYPE=q8_0 THREADS=1 ROWS="1 8 32"
#
# Shares target/compare (checkpoints, imported models) with the other scripts. Writes
# benches/results/batch_decode.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
ROUNDS="${ROUNDS:-5}"
STEPS="${STEPS:-64}"
SHAPE="${SHAPE:-110M}"
DTYPE="${DTYPE:-q8_0}"
THREADS="${THREADS:-1}"
ROWS="${ROWS:-1 8 32}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"

random_checkpoints "$SHAPE"
enigma_binary
m="$WORK/r$SHAPE-$DTYPE.enigma"
random_model "$SHAPE" "$DTYPE" "$m"
cargo build --release -p enigma-benches --bin batch_decode
B=target/release/batch_decode

results_begin batch_decode "Batched decode: time per step and per row, and the batch of one against the single-sequence loop" \
    "ROUNDS=$ROUNDS STEPS=$STEPS SHAPE=$SHAPE DTYPE=$DTYPE THREADS=$THREADS ROWS=\"$ROWS\" bash benches/batch_decode.sh"
results_line "A random-weight $SHAPE llama2.c checkpoint as $DTYPE, $THREADS thread(s). \`step\`: ROWS sequences of 16 prompt tokens, then $STEPS steps of one decode row per sequence through \`Transformer::step\` (paged cache, blocks of 16, logits of every row); ms per step and per row. \`one\`: a 1-token prompt and $STEPS greedy decode steps, tokens per second: \`session\` is \`enigma bench\`'s loop (the \`HostSession\` \`enigma run\` decodes with), \`batcher\` the same through the batched engine as a batch of one (timed from its first token). Medians over the rounds."
results_line ""

raw="$WORK/batch_decode_rounds.txt"
: >"$raw"
read -r -a rows <<<"$ROWS"
for r in $(seq 1 "$ROUNDS"); do
    n=${#rows[@]}
    for i in $(seq 0 $((n - 1))); do
        k=${rows[$(((i + r) % n))]}
        out=$("$B" step "$m" "$k" "$STEPS" "$THREADS")
        echo "round $r step $k $out load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$raw"
    done
    kinds="session batcher"
    [ $((r % 2)) -eq 0 ] && kinds="batcher session"
    for kind in $kinds; do
        out=$("$B" one "$m" "$STEPS" "$THREADS" "$kind")
        echo "round $r one $kind $out load $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$raw"
    done
done

summary=$(python3 - "$raw" "$SHAPE" "$DTYPE" "$THREADS" <<'PY'
import collections, statistics, sys
step = collections.defaultdict(list)
one = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if f[2] == "step":
        step[int(f[3])].append((float(f[4]), float(f[5])))
    else:
        one[f[3]].append(float(f[4]))
rounds = max(len(v) for v in one.values())
print(f"{'shape':>6} {'dtype':>5} {'thr':>3} {'rows':>5} {'ms/step':>9} {'ms/row':>8} {'rows/s':>8} {'vs 1 row':>9}  (medians of {rounds} rounds)")
base = statistics.median(ms for ms, _ in step[min(step)]) if step else None
for k in sorted(step):
    ms = statistics.median(a for a, _ in step[k])
    per = statistics.median(b for _, b in step[k])
    print(f"{sys.argv[2]:>6} {sys.argv[3]:>5} {sys.argv[4]:>3} {k:>5} {ms:>9.2f} {per:>8.3f} {1000 / per:>8.1f} {base / per if base else 0:>8.2f}x")
print()
s, b = statistics.median(one["session"]), statistics.median(one["batcher"])
print(f"{'shape':>6} {'dtype':>5} {'thr':>3} {'session tok/s':>14} {'batcher tok/s':>14} {'ratio':>6}")
print(f"{sys.argv[2]:>6} {sys.argv[3]:>5} {sys.argv[4]:>3} {s:>14.1f} {b:>14.1f} {b / s:>6.3f}")
PY
)
printf '%s\n' "$summary"
printf '%s\n' "$summary" | results_block
results_line "Every round (step: ms/step ms/row; one: tok/s):"
results_line ""
results_block <"$raw"
results_end
