#!/usr/bin/env bash
# Runs every fuzz target (fuzz/README.md) for FUZZ_SECONDS each (default 30) from the seed corpora, and
# fails if any target crashes: a panic, a hang past 10 s on one input, or an allocation past the caps.
# `.ci/run` calls it after the tests; FUZZ_SECONDS=600 is the campaign of issue 12. Prints one line per
# target: executions and outcome (libFuzzer's final stats).
#
# No cargo-fuzz: the targets are built with plain `cargo build --release` and the flags that
# `cargo fuzz build --sanitizer none` passes (cargo-fuzz 0.13's src/project.rs), into their own target
# folder, and the libFuzzer binaries are run directly. Needs a C++ compiler (libfuzzer-sys compiles
# libFuzzer), python3 and ../shared (fuzz/seed.sh).
#
#   FUZZ_SECONDS=600        how long each target runs (default 30)
#   FUZZ_TARGETS="a b"      only these targets (default: every file in fuzz/fuzz_targets/)
#   FUZZ_NICE="nice -n 19"  prefix for the build and the runs, on a shared machine
#   FUZZ_TIMEOUT=10         seconds one input may run (libFuzzer's -timeout, wall clock) before it counts as a
#                           hang; inputs over 10 s are saved as artifacts/<target>/slow-unit-* either way. Raise
#                           it only on a machine so loaded that wall time says nothing about the input's cost,
#                           and measure the slow units afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${FUZZ_SECONDS:-30}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
NICE="${FUZZ_NICE:-}"

bash scripts/ci-tools.sh fuzz
bash fuzz/seed.sh

cd fuzz
targets=()
for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
[ -z "${FUZZ_TARGETS:-}" ] || read -r -a targets <<<"$FUZZ_TARGETS"

# What cargo-fuzz passes for `--sanitizer none` in its default (optimized, debug-assertions) mode:
# coverage instrumentation for libFuzzer, `--cfg fuzzing`, debug assertions and overflow checks, one
# codegen unit. `--target` keeps RUSTFLAGS off build scripts and proc macros (they are not linked with
# libFuzzer); the separate target folder keeps these flags from rebuilding a plain `cargo build` in fuzz/
# (or `cargo fuzz`'s builds) and back.
host="$(rustc -vV | sed -n 's/^host: //p')"
export CARGO_TARGET_DIR="$PWD/target/ci-fuzz"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
 -Cllvm-args=-sanitizer-coverage-stack-depth \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks -Ccodegen-units=1 ${RUSTFLAGS:-}"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
$NICE cargo build --release --locked --target "$host" "${bins[@]}"
bindir="$CARGO_TARGET_DIR/$host/release"

# libFuzzer's flags: one input may take 10 s and the process 2 GiB; single allocations are capped at
# 512 MiB by the targets' own allocator (src/lib.rs), since -malloc_limit_mb needs a sanitizer.
COMMON=(-timeout="$TIMEOUT" -report_slow_units=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)
max_len() {
    case "$1" in
        enigma_file | llama2c_checkpoint) echo 1100000 ;; # stories260K
        llama2c_tokenizer) echo 440000 ;;                 # Llama 2's 32000-piece tokenizer.bin
        tokenizer_json | train_data | gguf | safetensors) echo 65536 ;;
        *) echo 16384 ;;
    esac
}

mkdir -p logs
failed=()
printf '%-20s %12s  %s\n' target executions result
for t in "${targets[@]}"; do
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    mkdir -p "corpus/$t" "artifacts/$t"
    log="logs/$t.log"
    if $NICE "$bindir/$t" "${dirs[@]}" "${COMMON[@]}" -artifact_prefix="artifacts/$t/" \
        -max_len="$(max_len "$t")" -max_total_time="$SECS" >"$log" 2>&1; then
        result=ok
    else
        # The last input written: slow units (below) are written with the same words before it.
        result="CRASH: $(grep -o 'Test unit written to .*' "$log" | tail -n1 | sed 's/^Test unit written to /fuzz\//' || true)"
        failed+=("$t")
    fi
    slow="$(grep -c '^Slowest unit:' "$log" || true)"
    [ "$slow" = 0 ] || result+=" ($slow slow units, over 10 s: fuzz/artifacts/$t/slow-unit-*)"
    execs="$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    printf '%-20s %12s  %s\n' "$t" "$execs" "$result"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets that crashed: ${failed[*]} (logs in fuzz/logs/, inputs in fuzz/artifacts/)" >&2
    for t in "${failed[@]}"; do
        echo "---- fuzz/logs/$t.log: the failure; reproduce with fuzz/target/ci-fuzz/$host/release/$t INPUT" >&2
        grep -E -A3 'panicked at|memory allocation of|ERROR: libFuzzer|Test unit written' "logs/$t.log" | head -n 24 >&2
    done
    exit 1
fi
