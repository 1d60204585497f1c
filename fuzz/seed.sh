#!/usr/bin/env bash
# Builds the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (git-ignored): third-party models
# and texts from ENIGMA_SHARED (default ../shared beside the repository) are cut and converted here, at run
# time, and never committed. Small seeds written for this project sit in fuzz/seeds/ and are passed as a
# second corpus folder by the run commands (fuzz/README.md).
#
# Needs python3 and the `enigma` binary (ENIGMA_BIN, default target/debug/enigma: built here if missing,
# which is free after `cargo test --workspace`). Run from anywhere; idempotent.
set -euo pipefail
FUZZ="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$FUZZ")"
SHARED="${ENIGMA_SHARED:-$(dirname "$ROOT")/shared}"
ENIGMA_BIN="${ENIGMA_BIN:-$ROOT/target/debug/enigma}"
C="$FUZZ/corpus"
for d in "$SHARED/models" "$SHARED/data"; do
    [ -d "$d" ] || { echo "seed.sh: $d is missing (set ENIGMA_SHARED)" >&2; exit 1; }
done
mkdir -p "$C"/{gguf,enigma_file,llama2c_checkpoint,llama2c_tokenizer,tokenizer_json,train_data,modules_json,sampler,safetensors}
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# Tiny llama2.c checkpoints and a tokenizer made here (deterministic random weights): the three layouts
# (current, legacy with freq_cis, untied classifier), small enough that mutations reach every field.
python3 - "$TMP" <<'EOF'
import random, struct, sys
out = sys.argv[1]
rng = random.Random(12)

def checkpoint(path, dim, hidden, layers, heads, kv, vocab, seq, legacy, tied):
    hs = dim // heads
    kvd = hs * kv
    n = (vocab * dim + layers * dim + layers * dim * dim + 2 * layers * kvd * dim + layers * dim * dim
         + layers * dim + 3 * layers * hidden * dim + dim)
    if legacy:
        n += seq * hs  # freq_cis_real and freq_cis_imag, seq x hs/2 each
    if not tied:
        n += vocab * dim
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if tied else -vocab, seq))
        f.write(struct.pack("<%df" % n, *(rng.uniform(-0.1, 0.1) for _ in range(n))))

checkpoint(f"{out}/tiny.bin", 32, 64, 1, 2, 1, 48, 16, False, True)
checkpoint(f"{out}/tiny-legacy.bin", 32, 64, 2, 4, 2, 48, 8, True, True)
checkpoint(f"{out}/tiny-untied.bin", 8, 16, 1, 2, 2, 48, 4, False, False)
# A context of 2^20 tokens: a KV cache for all of it would take 1.25 GiB (issue 12 point 5, regress-12.5-*).
checkpoint(f"{out}/long-context.bin", 32, 8, 5, 2, 2, 48, 1 << 20, False, True)

# 48 pieces: <unk> <s> </s>, the lowercase letters, space, then merges; llama2.c's layout.
pieces = [b"<unk>", b"<s>", b"</s>"] + [bytes([c]) for c in range(ord("a"), ord("z") + 1)] + [b" "]
pieces += [b" t", b"th", b"he", b" the", b"an", b"in", b" a", b"er", b"on", b"at", b"en", b"nd",
           b"ed", b"es", b"or", b"\xc3\xa9", b"<0x0A>", b"ing"][: 48 - len(pieces)]
with open(f"{out}/tok48.bin", "wb") as f:
    f.write(struct.pack("<i", max(len(p) for p in pieces)))
    for i, p in enumerate(pieces):
        f.write(struct.pack("<fi", 0.0 if i < 30 else -float(i), len(p)) + p)
EOF

# llama2c_checkpoint: the real stories260K and the tiny ones.
install -m 0644 "$SHARED/models/stories260K.bin" "$C/llama2c_checkpoint/stories260K.bin"
install -m 0644 "$TMP"/tiny*.bin "$C/llama2c_checkpoint/"
install -m 0644 "$TMP/long-context.bin" "$C/llama2c_checkpoint/regress-12.5-long-context.bin"

# llama2c_tokenizer: the vocabulary size (u32 LE), then the file.
tok_seed() { { python3 -c "import struct,sys; sys.stdout.buffer.write(struct.pack('<I', $2))"; cat "$1"; } > "$3"; }
tok_seed "$SHARED/models/tok512.bin" 512 "$C/llama2c_tokenizer/tok512"
tok_seed "$SHARED/models/tokenizer.bin" 32000 "$C/llama2c_tokenizer/llama2-32000"
tok_seed "$TMP/tok48.bin" 48 "$C/llama2c_tokenizer/tok48"

# tokenizer_json: the bundled model's tokenizer (this project's own).
install -m 0644 "$ROOT/host-tools/models/builtin/tokenizer.json" "$C/tokenizer_json/default.json"

# train_data: [format, seq-len, val-split] then the file; 4 KB cuts of each text, and conversations
# (JSONL, Q/A) built from the texts' lines.
python3 - "$SHARED/data" "$C/train_data" <<'EOF'
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(src)):
    if not name.endswith(".txt"):
        continue
    text = open(os.path.join(src, name), "rb").read()
    base = name[:-4]
    for k, at in enumerate((0, len(text) // 2, max(0, len(text) - 4096))):
        with open(f"{out}/{base}-{k}.txt.bin", "wb") as f:
            f.write(bytes([1, 32, 10]) + text[at:at + 4096])
    lines = [l for l in text.decode("utf-8", "replace").splitlines() if l.strip()][:48]
    with open(f"{out}/{base}.jsonl.bin", "wb") as f:
        f.write(bytes([2, 16, 20]))
        for i in range(0, len(lines) - 1, 2):
            msgs = [{"role": "user", "content": lines[i]}, {"role": "assistant", "content": lines[i + 1]}]
            f.write((json.dumps({"messages": msgs}, ensure_ascii=(i % 4 == 0)) + "\n").encode())
    with open(f"{out}/{base}.qa.bin", "wb") as f:
        f.write(bytes([3, 24, 0]))
        for i in range(0, len(lines) - 1, 2):
            f.write(f"Q: {lines[i]}\nA: {lines[i + 1]}\n\n".encode())
EOF

# sampler: settings, a history, flags, then logits (see fuzz/src/sampler.rs for the layout).
python3 - "$C/sampler" <<'EOF'
import math, struct, sys
out = sys.argv[1]
def seed(name, t, k, p, pen, last, s, hist, flags, logits):
    b = struct.pack("<fIffIQ", t, k, p, pen, last, s) + bytes([len(hist)])
    b += struct.pack("<%dI" % len(hist), *hist) + bytes([flags]) + struct.pack("<%df" % len(logits), *logits)
    open(f"{out}/{name}", "wb").write(b)
peaked = [math.sin(i) * 3 for i in range(64)]
seed("greedy", 0.0, 0, 0.9, 1.0, 64, 1, [], 0, peaked)
seed("top-p", 1.0, 0, 0.9, 1.0, 64, 42, [1, 2, 3], 0, peaked)
seed("top-k", 0.7, 5, 1.0, 1.3, 8, 7, [5, 5, 9, 63], 0, peaked)
seed("top-k-top-p", 1.5, 40, 0.5, 1.1, 256, 0, list(range(20)), 0, peaked)
seed("no-scratch", 1.0, 3, 0.8, 0.5, 2, 9, [0, 1], 1, peaked)
seed("flat", 2.0, 0, 0.99, 1.0, 0, 3, [], 0, [0.0] * 512)
seed("one", 1.0, 0, 0.9, 1.0, 64, 3, [], 0, [1.0])
EOF

# enigma_file: imported models in several dtypes, each with the CRC-fixing mode byte off (0) and on (3).
if [ ! -x "$ENIGMA_BIN" ]; then
    (cd "$ROOT" && nice -n 19 cargo build -q -p enigma-cli)
fi
"$ENIGMA_BIN" import llama2c "$SHARED/models/stories260K.bin" --tokenizer "$SHARED/models/tok512.bin" \
    -o "$TMP/stories260K.enigma" >/dev/null
"$ENIGMA_BIN" quantize "$TMP/stories260K.enigma" -o "$TMP/stories260K-q4_0.enigma" --to q4_0 >/dev/null
for ck in tiny tiny-legacy tiny-untied; do
    "$ENIGMA_BIN" import llama2c "$TMP/$ck.bin" --tokenizer "$TMP/tok48.bin" -o "$TMP/$ck.enigma" >/dev/null
done
for to in f16 bf16 q8_0 q4_0; do
    "$ENIGMA_BIN" quantize "$TMP/tiny.enigma" -o "$TMP/tiny-$to.enigma" --to "$to" >/dev/null
done
"$ENIGMA_BIN" import llama2c "$TMP/long-context.bin" --tokenizer "$TMP/tok48.bin" \
    -o "$TMP/regress-12.5-long-context.enigma" >/dev/null
for f in "$TMP"/*.enigma; do
    b="$(basename "$f" .enigma)"
    { printf '\x00'; cat "$f"; } > "$C/enigma_file/$b-0"
    { printf '\x03'; cat "$f"; } > "$C/enigma_file/$b-3"
done

# gguf: the small imported models exported by `enigma export gguf` (v3, llama and byte-fallback vocabularies),
# in each dtype the writer keeps.
for f in "$TMP"/tiny*.enigma; do
    "$ENIGMA_BIN" export gguf "$f" -o "$C/gguf/$(basename "$f" .enigma).gguf" --force >/dev/null
done
# and the head of llama.cpp's own version-1 file (its metadata and tensor table, cut inside the data).
head -c 65536 "$SHARED/models/tinyllamas-stories-260k-f32.gguf" >"$C/gguf/tinyllamas-v1-head.gguf"

echo "seeds: $(find "$C" -type f | wc -l) files in $C"
