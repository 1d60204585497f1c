# Sourced by the bench scripts that run the random-weight llama2.c checkpoints of
# ../shared/tools/gen_llama2c_ckpt.py; the script sets SHARED (../shared) and WORK (the checkpoints' folder).
#
#   enigma_binary                     # E: $ENIGMA_BIN, or target/release/enigma, built now
#   random_checkpoints "15M 110M"     # $WORK/models/r<shape>.bin for each shape not there yet (installs numpy)
#   random_model SHAPE DTYPE PATH     # PATH: the checkpoint imported as DTYPE with Llama 2's tokenizer, if missing

enigma_binary() {
    E="${ENIGMA_BIN:-target/release/enigma}"
    [ -n "${ENIGMA_BIN:-}" ] || cargo build --release -p enigma-cli
}

random_checkpoints() {
    python3 -c 'import numpy' 2>/dev/null || pip install --quiet numpy
    local s
    (cd "$WORK" && for s in $1; do [ -f "models/r$s.bin" ] || python3 "$SHARED/tools/gen_llama2c_ckpt.py" "$s"; done)
}

random_model() {
    [ -f "$3" ] || "$E" import llama2c "$WORK/models/r$1.bin" --tokenizer "$SHARED/models/tokenizer.bin" \
        -o "$3" --quantize "$2"
}
