#!/usr/bin/env bash
# Runs every fuzz target (fuzz/README.md) for FUZZ_SECONDS each (default 30) from the seed corpora, and
# fails if any target crashes: a panic, a hang past 10 s on one input, or an allocation past the caps.
# `.ci/run` calls it after the tests; FUZZ_SECONDS=600 is the campaign of issue 12. Prints one line per
# target: executions and outcome (libFuzzer's final stats).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-30}"
# Where ci-fuzz runs by hand on a shared machine, FUZZ_NICE="nice -n 19" keeps it out of the way.
NICE="${FUZZ_NICE:-}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
bash fuzz/seed.sh

cd fuzz
# libFuzzer's flags: one input may take 10 s and the process 2 GiB; single allocations are capped at
# 512 MiB by the targets' own allocator (src/lib.rs), since -malloc_limit_mb needs a sanitizer.
COMMON=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)
max_len() {
    case "$1" in
        enigma_file | llama2c_checkpoint) echo 1100000 ;; # stories260K
        llama2c_tokenizer) echo 440000 ;;                 # Llama 2's 32000-piece tokenizer.bin
        tokenizer_json | train_data) echo 65536 ;;
        *) echo 16384 ;;
    esac
}

$NICE cargo fuzz build --sanitizer none
mkdir -p logs
failed=()
printf '%-20s %12s  %s\n' target executions result
for t in $(cargo fuzz list); do
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    log="logs/$t.log"
    if $NICE cargo fuzz run --sanitizer none "$t" "${dirs[@]}" -- "${COMMON[@]}" \
        -max_len="$(max_len "$t")" -max_total_time="$SECS" >"$log" 2>&1; then
        result=ok
    else
        result="CRASH: $(grep -m1 -o 'Test unit written to .*' "$log" | sed 's/^Test unit written to //' || true)"
        failed+=("$t")
    fi
    execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    printf '%-20s %12s  %s\n' "$t" "$execs" "$result"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]} (logs in fuzz/logs/, inputs in fuzz/artifacts/)" >&2
    for t in "${failed[@]}"; do
        echo "---- fuzz/logs/$t.log: the failure, then how to reproduce it" >&2
        grep -E -A3 'panicked at|memory allocation of|ERROR: libFuzzer|Test unit written' "logs/$t.log" | head -n 24 >&2
        grep -A2 'Reproduce with' "logs/$t.log" >&2 || true
    done
    exit 1
fi
