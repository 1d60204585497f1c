#!/usr/bin/env bash
# Instructions per generated token of stories260K on the Cortex-M4F, counted exactly under QEMU, and the MCU
# speed that follows at 100 MHz and 1 instruction per cycle (an estimate: a real M4 needs more than one cycle for
# loads, multiplies and taken branches, and flash wait states add more; treat it as an upper bound).
#
# Builds shared/tools/qemu-insncount.c (a QEMU 7.2 TCG plugin), imports stories260K as f32, q8_0 and q4_0, and
# runs `enigma flash --board mps2-an386 --insn-plugin ...` for each, with the default kernel tier and the
# generic one: the firmware calls `perf_mark` once per generated token and the plugin prints the instructions
# between calls. The first delta (boot, prompt, first token) is left out; the rest are averaged.
#
# The Cortex-M0+ row (the Pico's instruction set; QEMU has no M0+ board with the RAM for the model): the same
# QEMU board's firmware built for thumbv6m-none-eabi and run on the emulated M4, which executes Armv6-M code
# as it is, so the count is the M0+'s (no FPU, no DSP: the kernels' portable forms, floats in software).
#
# Needs: qemu-system-arm, gcc, nm, the thumbv7em-none-eabihf and thumbv6m-none-eabi targets.
# Usage: benches/firmware_insncount.sh [N_TOKENS]; TIERS="default" skips the generic-kernel rows, M0PLUS=0
# the Cortex-M0+ row (a build of its own and about 2 billion emulated instructions).
#
# Writes benches/results/firmware_insncount.md (commit, host CPU, date, QEMU version, the command, the table);
# RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
shared="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
n="${1:-64}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

gcc -O2 -shared -fPIC -o "$work/libinsncount.so" "$shared/tools/qemu-insncount.c"
cargo build --release -q -p enigma-cli
enigma="${CARGO_TARGET_DIR:-target}/release/enigma"

"$enigma" import llama2c "$shared/models/stories260K.bin" --tokenizer "$shared/models/tok512.bin" \
    -o "$work/stories260K-f32.enigma" 2>/dev/null
for q in q8_0 q4_0; do
    "$enigma" import llama2c "$shared/models/stories260K.bin" --tokenizer "$shared/models/tok512.bin" \
        -o "$work/stories260K-$q.enigma" --quantize "$q" 2>/dev/null
done

results_begin firmware_insncount "Firmware: instructions per token on the Cortex-M4F (QEMU)" \
    "TIERS=\"${TIERS:-default generic}\" bash benches/firmware_insncount.sh $n"
results_line "$(qemu-system-arm --version | head -n 1); instruction counts are exact and repeat from run to run (they do not depend on the host or its load). The tok/s column is an estimate at 100 MHz and 1 instruction per cycle, an upper bound for a real M4."
results_line ""
table="$work/table.txt"
printf '\nstories260K on mps2-an386 (Cortex-M4F, QEMU), prompt "Once upon a time", %s tokens greedy\n' "$n"
printf '%-6s %-10s %18s %14s %s\n' dtype kernels "instructions/token" "min..max" "estimated tok/s at 100 MHz, 1 IPC" | tee "$table"
for dtype in f32 q8_0 q4_0; do
    for tier in ${TIERS:-default generic}; do
        args=()
        [ "$tier" = generic ] && args=(--kernels generic)
        "$enigma" flash --board mps2-an386 --model "$work/stories260K-$dtype.enigma" -p "Once upon a time" \
            -n "$n" --temp 0 --seed 1 --out-dir "$work/out" --insn-plugin "$work/libinsncount.so" "${args[@]}" \
            >"$work/text" 2>"$work/log" || { cat "$work/log" >&2; exit 1; }
        used=$(sed -n 's/.*INFO  buffers: .*; kernels \(.*\)$/\1/p' "$work/log")
        line=$(grep '^instructions per generated token' "$work/log")
        mean=$(sed -n 's/^insn_per_token [^ ]* \([0-9]*\)$/\1/p' "$work/log")
        range=$(echo "$line" | sed -n 's/.*min \([0-9]*\), max \([0-9]*\);.*/\1..\2/p')
        rate=$(awk -v m="$mean" 'BEGIN { printf "%.1f", 100e6 / m }')
        printf '%-6s %-10s %18s %14s %s (estimate)\n' "$dtype" "${used:-$tier}" "$mean" "$range" "$rate" | tee -a "$table"
    done
done
if [ "${M0PLUS:-1}" != 0 ]; then
    # build.rs reads these (`enigma flash` sets them the same way); the image goes to its own target folder.
    m0="$(pwd)/firmware/target/m0plus"
    (cd firmware/boards/mps2-an386 && ENIGMA_MODEL="$work/stories260K-q8_0.enigma" \
        ENIGMA_PROMPT="Once upon a time" ENIGMA_STEPS="$n" ENIGMA_TEMPERATURE=0 ENIGMA_SEED=1 \
        ENIGMA_MEMORY_X="$(pwd)/memory.x" CARGO_TARGET_DIR="$m0" \
        cargo build --release -q --target thumbv6m-none-eabi)
    elf="$m0/thumbv6m-none-eabi/release/mps2-an386"
    mark=$(nm "$elf" | awk '$3 == "perf_mark" { print $1 }')
    qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -display none -monitor none -serial stdio \
        -serial null -semihosting-config enable=on,target=native \
        -plugin "$work/libinsncount.so,mark=0x$mark" -d plugin -D "$work/m0.log" -kernel "$elf" >"$work/text"
    # deltas after the first (boot, prompt, first token), as `enigma flash` averages them
    read -r mean lo hi < <(sed -n 's/^insn_mark [0-9]* delta=//p' "$work/m0.log" | tail -n +2 \
        | awk '{ s += $1; if (NR == 1 || $1 < lo) lo = $1; if ($1 > hi) hi = $1 } END { printf "%.0f %d %d\n", s / NR, lo, hi }')
    rate=$(awk -v m="$mean" 'BEGIN { printf "%.1f", 125e6 / m }')
    printf '%-6s %-10s %18s %14s %s (estimate at 125 MHz)\n' q8_0 "m0+ (v6m)" "$mean" "$lo..$hi" "$rate" | tee -a "$table"
fi
results_block <"$table"
results_end
