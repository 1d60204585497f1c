#!/usr/bin/env bash
# Sets up and runs the main job: build the `enigma` CLI, generate with the model built into it (trained by
# `enigma train`, see README), then, when ../shared is beside the checkout, import llama2.c's stories260K
# into a .enigma file of the models home (replacing the one an earlier run wrote) and generate a story from it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ENIGMA_SHARED:-../shared}"
cargo build --release -p enigma-cli
enigma="${CARGO_TARGET_DIR:-target}/release/enigma"
"$enigma" run -p "And it came to pass" -n 120 --temp 0.8 --seed 42
if [ -f "$SHARED/models/stories260K.bin" ]; then
    home="${ENIGMA_HOME:-models}"
    mkdir -p "$home"
    "$enigma" import llama2c "$SHARED/models/stories260K.bin" \
        --tokenizer "$SHARED/models/tok512.bin" -o "$home/stories260K.enigma" --force
    "$enigma" info "$home/stories260K.enigma"
    # A loose .enigma file in the models home is a model by its name: `enigma models list` shows it.
    "$enigma" run -m stories260K -p "Once upon a time" -n 200 --temp 0.8 --seed 42
    "$enigma" models list
else
    echo "($SHARED/models/stories260K.bin not found: skipping the llama2.c import)"
fi
