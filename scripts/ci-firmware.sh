#!/usr/bin/env bash
# CI for the firmware (firmware/, `enigma flash`): installs what it needs on a fresh Debian machine, builds the
# real boards' images with stories260K q8_0 (printing flash and RAM use against each board's budget), boots the
# emulated Cortex-M4F and compares its text with `enigma run` (f32 byte for byte, q8_0 on a 1 MiB / 256 KiB
# budget), checks that a panic fails the run and that a model too big for a board fails the build, clippy's the
# firmware for its targets, and prints instructions per token.
#
# Cost on 2 cores, cold: about 9 minutes of CPU for the firmware (images, QEMU runs, tests, bench) plus 2.5 for
# defmt-print (cargo install, built in the background while the images build); about 4 minutes warm.
# ENIGMA_CI_NO_DEFMT_PRINT=1 skips defmt-print (the tests then skip decoding, loudly).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
export ENIGMA_SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
export CARGO_TERM_COLOR=never
step() { printf '\n==== firmware: %s (%ss)\n' "$1" "$SECONDS"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

step "tools: qemu-system-arm, thumb targets, defmt-print"
if ! command -v qemu-system-arm >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq qemu-system-arm >/dev/null
fi
qemu-system-arm --version | head -1
rustup target add thumbv7em-none-eabihf thumbv6m-none-eabi
defmt_pid=""
if [ "${ENIGMA_CI_NO_DEFMT_PRINT:-0}" != 1 ] && ! command -v defmt-print >/dev/null; then
    cargo install defmt-print --locked --quiet >"${TMPDIR:-/tmp}/defmt-print-install.log" 2>&1 &
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
"$enigma" flash --board mps2-an386 --model "$models/stories260K.enigma" -i "Once upon a time" -n 64 -t 0 --seed 42

step "clippy of the firmware (the library and the QEMU board; FIRMWARE_CLIPPY_ALL=1 adds the real boards)"
# The real boards' clippy re-checks their HAL and PAC crates (several minutes); their images built above.
boards="mps2-an386"
[ "${FIRMWARE_CLIPPY_ALL:-0}" = 1 ] && boards="mps2-an386 nucleo-f411re rp-pico"
for board in $boards; do
    (cd firmware/boards/$board \
        && ENIGMA_MODEL="$models/stories260K-q8_0.enigma" ENIGMA_PROMPT=x cargo clippy --release -q -- -D warnings)
done
# Only the firmware's own packages (`--all` would also check its path dependencies, the core and kernels).
(cd firmware && cargo fmt -p enigma-firmware -p enigma-firmware-mps2-an386 -p enigma-firmware-nucleo-f411re \
    -p enigma-firmware-rp-pico -- --check)

if [ -n "$defmt_pid" ]; then
    step "waiting for defmt-print"
    wait "$defmt_pid" || { cat "${TMPDIR:-/tmp}/defmt-print-install.log"; exit 1; }
fi

step "tests: host-tools/cli/tests/firmware.rs"
cargo test -p enigma-cli --test firmware

step "instructions per token on the Cortex-M4F (benches/firmware_insncount.sh)"
TIERS=default bash benches/firmware_insncount.sh 64

step "done"
