#!/usr/bin/env bash
# Sets up and runs the main job: build the `enigma` CLI, generate with the model built into it (trained by
# `enigma train`, see README), then, when ../shared is beside the checkout, import llama2.c's stories260K
# into a .enigma file and generate a story from it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${ENIGMA_SHARED:-../shared}"
cargo build --release -p enigma-cli
enigma="${CARGO_TARGET_DIR:-target}/release/enigma"
"$enigma" run -p "ROMEO:" -n 120 --temp 0.8 --seed 42
if [ -f "$SHARED/models/stories260K.bin" ]; then
    mkdir -p models
    "$enigma" import llama2c "$SHARED/models/stories260K.bin" \
        --tokenizer "$SHARED/models/tok512.bin" -o models/stories260K.enigma
    "$enigma" info models/stories260K.enigma
    "$enigma" run -m models/stories260K.enigma -p "Once upon a time" -n 200 --temp 0.8 --seed 42
else
    echo "($SHARED/models/stories260K.bin not found: skipping the llama2.c import)"
fi
