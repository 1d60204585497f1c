#!/usr/bin/env bash
# The Raspberry Pi path in CI: cross-build for aarch64 Linux, run the kernel tests (NEON and NEON+dotprod
# tiers against the scalar reference) under qemu-aarch64, and check a short stories260K generation there against the host's.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
# The comparison below needs stories260K; say so before minutes of building, not after.
for f in models/stories260K.bin models/tok512.bin; do
    [ -f "$SHARED/$f" ] || { echo "ci-aarch64: $SHARED/$f is missing (the third-party files in ../shared; set ENIGMA_SHARED)" >&2; exit 1; }
done
bash scripts/ci-tools.sh aarch64

# Twice: as a Pi 4 (Cortex-A72, NEON; the dotprod tests report themselves skipped) and as a Pi 5
# (Cortex-A76, NEON with sdot; kernels/build.rs cannot probe an emulated CPU, so the feature is declared),
# so both aarch64 tables are tested against the scalar reference.
cargo test -p enigma-kernels --target aarch64-unknown-linux-gnu
ENIGMA_TEST_CPU_FEATURES=dotprod \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a76" \
    cargo test -p enigma-kernels --target aarch64-unknown-linux-gnu

# The dev profile (opt-level 2 here) reuses what `cargo test` already built for the host.
cargo build -p enigma-cli
cargo build -p enigma-cli --target aarch64-unknown-linux-gnu
out="${CARGO_TARGET_DIR:-target}"
model="$out/ci-stories260K.enigma"
"$out/debug/enigma" import llama2c "$SHARED/models/stories260K.bin" --tokenizer "$SHARED/models/tok512.bin" -o "$model" --force
args=(run -m "$model" -p "Once upon a time" -n 64 --temp 0 --threads 2)
host=$("$out/debug/enigma" "${args[@]}")
pi=$(qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu cortex-a72 "$out/aarch64-unknown-linux-gnu/debug/enigma" "${args[@]}")
if [ "$host" != "$pi" ]; then
    echo "aarch64 output differs from the host's:"; echo "host: $host"; echo "pi:   $pi"; exit 1
fi
echo "aarch64 (qemu cortex-a72) generates the same 64 greedy tokens as the host"
