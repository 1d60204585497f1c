#!/usr/bin/env bash
# Two `enigma serve` replicas behind HAProxy (Debian's package) on loopback: replicas hold no state between
# requests, so a standard load balancer spreads clients over them. The load test (benches/serve_load.py) runs
# through the balancer; then both replicas' /metrics are scraped, to show each served its share with no
# errors. HAProxy checks each replica's /health (503 while it loads), so a replica joins when it is ready.
#
#   bash benches/serve_lb.sh     # SERVE_LOAD_SECONDS=30 CLIENTS=1,8,32 SHAPE=15M MAX_TOKENS=64 THREADS=1
#                                # ENIGMA_BIN=... skips the release build; installs haproxy when missing
#
# Each replica gets THREADS threads (default 1, so two replicas share two cores without oversubscribing).
# Writes benches/results/serve_lb.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
DURATION="${SERVE_LOAD_SECONDS:-30}"
CLIENTS="${CLIENTS:-1,8,32}"
SHAPE="${SHAPE:-15M}"
MAX_TOKENS="${MAX_TOKENS:-64}"
THREADS="${THREADS:-1}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v haproxy >/dev/null || { as_root apt-get update -qq && as_root apt-get install -y -qq haproxy >/dev/null; }

random_checkpoints "$SHAPE"
enigma_binary
m="$WORK/r$SHAPE-q8_0.enigma"
random_model "$SHAPE" q8_0 "$m"

run_dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
urls=()
for r in 1 2; do
    mkdir -p "$run_dir/r$r"
    ENIGMA_HOME="$run_dir/r$r" "$E" serve -m "$m" -t "$THREADS" --port 0 --max-queue 256 \
        >"$run_dir/r$r/out" 2>"$run_dir/r$r/err" &
    pids+=($!)
done
for r in 1 2; do
    for _ in $(seq 1 600); do
        url=$(sed -n 's/^listening on //p' "$run_dir/r$r/out")
        [ -n "$url" ] && curl -sf "$url/health" >/dev/null && break
        sleep 0.1
    done
    [ -n "$url" ] || { cat "$run_dir/r$r/err" >&2; exit 1; }
    urls+=("$url")
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$run_dir/haproxy.cfg" <<CFG
global
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    # Streams are many small chunks: without this, HAProxy waits to fill packets and tokens arrive in bursts.
    option http-no-delay
frontend enigma
    bind 127.0.0.1:$port
    default_backend replicas
backend replicas
    balance leastconn
    option httpchk GET /health
    server r1 ${urls[0]#http://} check inter 500ms
    server r2 ${urls[1]#http://} check inter 500ms
CFG
haproxy -f "$run_dir/haproxy.cfg" -db >"$run_dir/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

results_begin serve_lb "Two enigma serve replicas behind HAProxy" \
    "SERVE_LOAD_SECONDS=$DURATION CLIENTS=$CLIENTS SHAPE=$SHAPE MAX_TOKENS=$MAX_TOKENS THREADS=$THREADS bash benches/serve_lb.sh"
results_line "Two \`enigma serve\` replicas ($THREADS thread each) of a random-weight $SHAPE llama2.c checkpoint as q8_0, behind HAProxy $(haproxy -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p') (\`balance leastconn\`, health checks on /health), all on loopback; \`benches/serve_load.py\` through the balancer as in serve_load.md. Then each replica's /metrics."
results_line ""
status=0
out="$WORK/serve_lb.txt"
python3 benches/serve_load.py "http://127.0.0.1:$port" "$m" --clients "$CLIENTS" --seconds "$DURATION" \
    --max-tokens "$MAX_TOKENS" --label "r$SHAPE x2" | tee "$out" || status=1
for r in 1 2; do
    echo "replica $r (${urls[$((r - 1))]}) /metrics:"
    curl -s "${urls[$((r - 1))]}/metrics" | grep -E '^enigma_(requests_total|generated_tokens_total|generations_running)' | sed 's/^/  /'
done | tee -a "$out"
results_block <"$out"
[ "$status" = 0 ] || results_line "**Some requests failed** (see the errors column)."
results_end
exit "$status"
