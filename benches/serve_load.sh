#!/usr/bin/env bash
# `enigma serve` under load: 1, 8 and 32 concurrent streaming clients (benches/serve_load.py) for N seconds
# each, against random-weight llama2.c 15M- and 110M-shape checkpoints (../shared/tools/gen_llama2c_ckpt.py)
# imported as q8_0 with Llama 2's tokenizer. Loopback only; the server runs with its defaults (all cores)
# and --max-queue 256, so no request is refused for room. Zero errors is part of the result: the script
# fails when any request fails. Then, per model, one client holds CHAT_TURNS-turn conversations for N seconds:
# per turn, the prompt tokens reported as cached and the time to the first token (the prompt cache's effect).
#
#   bash benches/serve_load.sh     # SERVE_LOAD_SECONDS=30 CLIENTS=1,8,32 SHAPES="15M 110M" MAX_TOKENS=64 CHAT_TURNS=3 PARALLEL=32
#                                  # ENIGMA_BIN=... skips the release build
#
# Shares target/compare (checkpoints, imported models) with the other side-by-side scripts. Writes
# benches/results/serve_load.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
DURATION="${SERVE_LOAD_SECONDS:-30}"
CLIENTS="${CLIENTS:-1,8,32}"
SHAPES="${SHAPES:-15M 110M}"
MAX_TOKENS="${MAX_TOKENS:-64}"
CHAT_TURNS="${CHAT_TURNS:-3}"
# Sequences the server decodes together (`enigma serve --parallel`): as many as the most clients, so none waits
# for another's whole reply.
PARALLEL="${PARALLEL:-32}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"

random_checkpoints "$SHAPES"
enigma_binary

# Starts `enigma serve -m $1` on a free loopback port over a models home of its own; sets PID and URL.
start_server() {
    local home
    home=$(mktemp -d)
    ENIGMA_HOME="$home" "$E" serve -m "$1" --port 0 --max-queue 256 --parallel "$PARALLEL" >"$home/out" 2>"$home/err" &
    PID=$!
    for _ in $(seq 1 600); do
        URL=$(sed -n 's/^listening on //p' "$home/out")
        if [ -n "$URL" ] && curl -sf "$URL/health" >/dev/null; then
            return
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$home/err" >&2; exit 1; }
        sleep 0.1
    done
    echo "the server did not become ready: $(cat "$home/err")" >&2
    exit 1
}

# CPU seconds (user + system) the server has used so far.
server_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$PID/stat"
}
cpu_note=""

results_begin serve_load "enigma serve under concurrent streaming clients" \
    "SERVE_LOAD_SECONDS=$DURATION CLIENTS=$CLIENTS SHAPES=\"$SHAPES\" MAX_TOKENS=$MAX_TOKENS CHAT_TURNS=$CHAT_TURNS PARALLEL=$PARALLEL bash benches/serve_load.sh"
results_line "Random-weight llama2.c checkpoints as q8_0 (Llama 2's 32000-token tokenizer), \`enigma serve --parallel $PARALLEL\` on loopback with its default threads, \`benches/serve_load.py\`: each client streams \`/v1/completions\` (up to $MAX_TOKENS tokens, temperature 0.8) in a loop for $DURATION s. tok/s = completion tokens of all requests / phase wall time; TTFT from sending the request to the first text chunk; ITL = time between text chunks. The load generator runs on the same cores as the server."
results_line ""

rows="$WORK/serve_load_rows.txt"
turns="$WORK/serve_turns_rows.txt"
: >"$rows"
: >"$turns"
status=0
for shape in $SHAPES; do
    m="$WORK/r$shape-q8_0.enigma"
    random_model "$shape" q8_0 "$m"
    start_server "$m"
    cpu0=$(server_cpu)
    /usr/bin/time -f "%U %S" -o "$WORK/client_cpu_$shape.txt" python3 benches/serve_load.py "$URL" "$m" \
        --clients "$CLIENTS" --seconds "$DURATION" --max-tokens "$MAX_TOKENS" --label "r$shape q8_0" \
        | tee "$WORK/serve_load_$shape.txt" || status=1
    cpu1=$(server_cpu)
    cpu_note="$cpu_note r$shape: server $(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN {print b - a}') s, load generator $(awk '{print $1 + $2}' "$WORK/client_cpu_$shape.txt") s;"
    python3 benches/serve_load.py "$URL" "$m" --chat-turns "$CHAT_TURNS" --clients 1 --seconds "$DURATION" \
        --max-tokens "$MAX_TOKENS" --label "r$shape q8_0" | tee "$WORK/serve_turns_$shape.txt" || status=1
    kill -TERM "$PID"
    wait "$PID" || { echo "enigma serve did not exit cleanly on SIGTERM" >&2; status=1; }
    if [ -s "$rows" ]; then tail -n +2 "$WORK/serve_load_$shape.txt" >>"$rows"; else cat "$WORK/serve_load_$shape.txt" >>"$rows"; fi
    if [ -s "$turns" ]; then tail -n +2 "$WORK/serve_turns_$shape.txt" >>"$turns"; else cat "$WORK/serve_turns_$shape.txt" >>"$turns"; fi
done
results_block <"$rows"
results_line "CPU time over the three phases of each model (the machine has $(nproc) cores, $((3 * DURATION)) s of phases):$cpu_note"
results_line ""
results_line "Multi-turn chats (\`--chat-turns $CHAT_TURNS\`, one client, $DURATION s): each turn sends the whole conversation so far; cached = prompt tokens the server reports as reused from a cached prefix (\`prompt_tokens_details.cached_tokens\`); cold = the same conversation sent (for one token) under a first line no request had before, so nothing is reused: the uncached time to the first token of a prompt of the same length."
results_line ""
results_block <"$turns"
[ "$status" = 0 ] || results_line "**Some requests failed** (see the errors column)."
results_end
exit "$status"
