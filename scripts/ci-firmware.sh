#!/usr/bin/env bash
# CI for the firmware (firmware/, `enigma flash`): installs what it needs on a fresh Debian machine, builds the
# real boards' images with stories260K q8_0 (printing flash and RAM use against each board's budget), boots the
# emulated Cortex-M4F and compares its text with `enigma run` (f32 byte for byte, q8_0 on a 1 MiB / 256 KiB
# budget), boots it built without defmt (its log as text on a UART), runs the console's unit tests on the host, checks that a panic fails the run and that a model too big
# for a board fails the build, clippy's the firmware for its targets, and prints instructions per token.
#
# Cost on 2 cores, cold: about 9 minutes of CPU for the firmware (images, QEMU runs, tests, bench) plus 2.5 for
# defmt-print (cargo install, built in the background while the images build); about 4 minutes warm.
# ENIGMA_CI_NO_DEFMT_PRINT=1 skips defmt-print outside CI (the tests then skip decoding, loudly); with CI set
# it is refused, since the tests would fail without it. ENIGMA_CI_FIRMWARE_TESTED=1 (set by .ci/run, whose
# `cargo test --workspace` has run them) leaves out host-tools/cli/tests/firmware.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export ENIGMA_SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
export CARGO_TERM_COLOR=never
step() { printf '\n==== firmware: %s (%ss)\n' "$1" "$SECONDS"; }

step "tools: qemu-system-arm, thumb targets, defmt-print"
for f in models/stories260K.bin models/tok512.bin; do
    [ -f "$ENIGMA_SHARED/$f" ] || { echo "ci-firmware: $ENIGMA_SHARED/$f is missing (the third-party files in ../shared; set ENIGMA_SHARED)" >&2; exit 1; }
done
if [ "${ENIGMA_CI_NO_DEFMT_PRINT:-0}" = 1 ] && [ -n "${CI:-}" ] && [ "$CI" != false ] && [ "$CI" != 0 ]; then
    echo "ci-firmware: ENIGMA_CI_NO_DEFMT_PRINT=1 is for runs outside CI; with CI set the tests need defmt-print" >&2
    exit 1
fi
bash scripts/ci-tools.sh firmware
qemu-system-arm --version | head -1
defmt_pid=""
if [ "${ENIGMA_CI_NO_DEFMT_PRINT:-0}" != 1 ] && ! command -v defmt-print >/dev/null; then
    bash scripts/ci-tools.sh defmt-print >"${TMPDIR:-/tmp}/defmt-print-install.log" 2>&1 &
    defmt_pid=$!
fi

step "the enigma CLI and stories260K as f32 and q8_0"
cargo build -p enigma-cli
enigma="${CARGO_TARGET_DIR:-$root/target}/debug/enigma"
models="$(mktemp -d)"
trap 'rm -rf "$models"' EXIT
"$enigma" import llama2c "$ENIGMA_SHARED/models/stories260K.bin" --tokenizer "$ENIGMA_SHARED/models/tok512.bin" \
    -o "$models/stories260K.enigma"
"$enigma" import llama2c "$ENIGMA_SHARED/models/stories260K.bin" --tokenizer "$ENIGMA_SHARED/models/tok512.bin" \
    -o "$models/stories260K-q8_0.enigma" --quantize q8_0

step "images: nucleo-f411re and rp-pico with stories260K q8_0 (flash and RAM use)"
for board in nucleo-f411re rp-pico; do
    "$enigma" flash --board "$board" --model "$models/stories260K-q8_0.enigma" --seed 42 2>&1 \
        | grep -v '^ *\(Compiling\|Checking\|Downloaded\|Downloading\)'
done

step "mps2-an386 under QEMU: stories260K f32, greedy, 64 tokens"
"$enigma" flash --board mps2-an386 --model "$models/stories260K.enigma" -p "Once upon a time" -n 64 --temp 0 --seed 42

step "the firmware's console on the host (cargo test --lib: valid UTF-8 from byte-fallback pieces)"
# The host's own target: the library's unit tests need std; the model only sizes the static buffers.
(cd firmware && ENIGMA_MODEL="$models/stories260K-q8_0.enigma" ENIGMA_PROMPT=x cargo test -p enigma-firmware --lib -q)

step "mps2-an386 without defmt: the log as text on UART1 (enigma_firmware::fmt), 8 greedy tokens"
# What a board without a debug probe does: the same log lines, formatted on the board, over a UART.
(cd firmware/boards/mps2-an386 && env -u CARGO_TARGET_DIR ENIGMA_MODEL="$models/stories260K-q8_0.enigma" \
    ENIGMA_PROMPT="Once upon a time" ENIGMA_STEPS=8 ENIGMA_TEMPERATURE=0 cargo build --release -q --no-default-features)
timeout 120 qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -display none -monitor none -serial stdio \
    -serial "file:$models/text.log" -semihosting-config enable=on,target=native \
    -kernel firmware/target/thumbv7em-none-eabihf/release/mps2-an386
cat "$models/text.log"
grep -q '^\[INFO\] done: 5 prompt tokens, 8 generated' "$models/text.log" \
    || { echo "ci-firmware: no text log line from the firmware built without defmt" >&2; exit 1; }

step "clippy of the firmware (the library and the QEMU board; FIRMWARE_CLIPPY_ALL=1 adds the real boards)"
# The real boards' clippy re-checks their HAL and PAC crates (several minutes); their images built above.
boards="mps2-an386"
[ "${FIRMWARE_CLIPPY_ALL:-0}" = 1 ] && boards="mps2-an386 nucleo-f411re rp-pico"
for board in $boards; do
    (cd firmware/boards/$board \
        && ENIGMA_MODEL="$models/stories260K-q8_0.enigma" ENIGMA_PROMPT=x cargo clippy --release -q -- -D warnings)
done
# The QEMU board's other log (text through enigma_firmware::fmt, no defmt) and the library without defmt.
(cd firmware/boards/mps2-an386 && ENIGMA_MODEL="$models/stories260K-q8_0.enigma" ENIGMA_PROMPT=x \
    cargo clippy --release -q --no-default-features -- -D warnings)
# Only the firmware's own packages (`--all` would also check its path dependencies, the core and kernels).
(cd firmware && cargo fmt -p enigma-firmware -p enigma-firmware-mps2-an386 -p enigma-firmware-nucleo-f411re \
    -p enigma-firmware-rp-pico -- --check)

if [ -n "$defmt_pid" ]; then
    step "waiting for defmt-print"
    wait "$defmt_pid" || { cat "${TMPDIR:-/tmp}/defmt-print-install.log"; exit 1; }
fi

if [ "${ENIGMA_CI_FIRMWARE_TESTED:-0}" = 1 ]; then
    step "tests: host-tools/cli/tests/firmware.rs ran in this CI run's cargo test --workspace"
else
    step "tests: host-tools/cli/tests/firmware.rs"
    cargo test -p enigma-cli --test firmware
fi

step "instructions per token on the Cortex-M4F (benches/firmware_insncount.sh)"
# The Cortex-M0+ row (M0PLUS) is left to the bench: its own thumbv6m build would add minutes to CI.
M0PLUS=0 TIERS=default bash benches/firmware_insncount.sh 64

step "done"
