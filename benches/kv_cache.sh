#!/usr/bin/env bash
# Decode cost with an f32 KV cache against an f16 one (`--kv-cache`) where attention matters: a random-weight
# 42M llama2.c checkpoint (context 1024) as q8_0, a prompt of about 660 tokens, then 300 greedy tokens, so
# decode runs at contexts 660-960, where the f32 cache read per token (about 27 MB) is over half the
# weights' 44 MB. 1 thread; f32 and f16 alternate within each round (their order swapped every round).
#
# The figure is CPU time per decoded token (getrusage of the child): one thread's CPU time counts its own work
# and memory stalls but not the time it waits for a core, so it holds still on a shared machine where wall time
# swings 2x with other builds. Decode = a run of STEPS tokens minus a run of 1 token (the same prefill).
#
#   bash benches/kv_cache.sh      # ROUNDS=5 STEPS=300 SHAPE=42M DTYPE=q8_0; ENIGMA_BIN=... skips the build
#
# Shares target/compare (checkpoints, imported models) with benches/compare_candle.sh. Writes
# benches/results/kv_cache.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
ROUNDS="${ROUNDS:-5}"
STEPS="${STEPS:-300}"
SHAPE="${SHAPE:-42M}"
DTYPE="${DTYPE:-q8_0}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"

random_checkpoints "$SHAPE"
enigma_binary
m="$WORK/r$SHAPE-$DTYPE.enigma"
random_model "$SHAPE" "$DTYPE" "$m"
prompt="$WORK/kv_cache_prompt.txt"
head -c 2500 "$SHARED/data/tinystories_sample_197k.txt" >"$prompt"

results_begin kv_cache "Decode cost: f32 KV cache against f16 at contexts 660-960" \
    "ROUNDS=$ROUNDS STEPS=$STEPS SHAPE=$SHAPE DTYPE=$DTYPE bash benches/kv_cache.sh"
results_line "\`enigma run\` on a random-weight $SHAPE llama2.c checkpoint as $DTYPE, the first 2500 bytes of the TinyStories sample as the prompt, $STEPS greedy tokens, 1 thread, \`--kv-cache f32\` and \`f16\` alternating. CPU ms per decoded token = (CPU of the $STEPS-token run - CPU of a 1-token run) / ($STEPS - 1). Medians over the rounds; ratio = f16 / f32."
results_line ""

raw="$WORK/kv_cache_rounds.txt"
python3 - "$E" "$m" "$prompt" "$ROUNDS" "$STEPS" "$raw" <<'PY'
import resource, subprocess, sys
e, model, prompt, rounds, steps, raw = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]

def cpu(kv, n):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([e, "run", "-m", model, "-f", prompt, "-n", str(n), "--temp", "0", "-t", "1",
                          "--kv-cache", kv], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(out.stderr)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, out.stderr.strip().splitlines()[-1]

with open(raw, "w") as f:
    for r in range(rounds):
        for kv in (["f32", "f16"] if r % 2 == 0 else ["f16", "f32"]):
            load = open("/proc/loadavg").read().split()[0]
            c1, _ = cpu(kv, 1)
            cn, line = cpu(kv, steps)
            row = f"round {r + 1} {kv} {(cn - c1) / (steps - 1) * 1000:.2f} ms/token (load {load}; {line})"
            print(row, flush=True)
            f.write(row + "\n")
PY
summary=$(python3 - "$raw" "$SHAPE" "$DTYPE" <<'PY'
import collections, statistics, sys
ms = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    ms[f[2]].append(float(f[3]))
a, b = statistics.median(ms["f32"]), statistics.median(ms["f16"])
print(f"{'shape':>6} {'dtype':>5} {'f32 KV ms/token':>16} {'f16 KV ms/token':>16} {'ratio':>6}  (CPU time, medians of {len(ms['f32'])} rounds)")
print(f"{sys.argv[2]:>6} {sys.argv[3]:>5} {a:>16.2f} {b:>16.2f} {b / a:>6.3f}")
PY
)
printf '%s\n' "$summary"
printf '%s\n' "$summary" | results_block
results_line "Every round:"
results_line ""
results_block <"$raw"
results_end
