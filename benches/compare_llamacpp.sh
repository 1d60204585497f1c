#!/usr/bin/env bash
# Prefill and decode speed, Enigma Engine against llama.cpp, on the same machine in the same script: the
# random-weight llama2.c checkpoints of compare_candle.sh (15M and 110M shapes, ../shared/tools/gen_llama2c_ckpt.py)
# in f32, q8_0 and q4_0, converted to GGUF by benches/llama2c_to_gguf.py with the same dtype per tensor as
# `enigma import --quantize` gives. llama-bench's tests: pp128 and pp512 (one prefill of that many tokens) and
# tg128 (128 tokens decoded one at a time), at 1 and 2 threads. Each round runs every configuration on both
# engines back to back, which engine goes first alternating from round to round, so a noisy moment or a slow
# drift of the machine hits both; the summary gives medians over the rounds and enigma/llama.cpp ratios.
#
# Before timing anything it checks that both engines produce the same greedy text for stories260K
# (../shared/models, f32): the converter (layout, RoPE pairing, tokenizer) is proven on a trained model,
# where a wrong layout would show, rather than on random weights, where nothing would.
#
#   bash benches/compare_llamacpp.sh               # ROUNDS=5 SHAPES="15M 110M" THREADS="1 2" DTYPES="f32 q8_0 q4_0"
#   bash benches/compare_llamacpp.sh --check-only  # the stories260K greedy parity alone (needs the llama.cpp build)
#   ENIGMA_BIN=/other/enigma LLAMACPP_DIR=target/llamacpp/build/bin bash benches/compare_llamacpp.sh
#
# llama.cpp comes from the pip llama-cpp-python sdist (its vendored llama.cpp), pinned below, built with cmake
# from PyPI into target/llamacpp/build, and reused afterwards (the builds took 10 to 22 minutes on a 2-core
# machine busy with other builds). TIER=native (default) builds it with -march=native, llama.cpp's own default;
# TIER=avx2 builds it without AVX-512 (in target/llamacpp/build-avx2) and runs enigma with
# ENIGMA_KERNELS=avx2: the AVX2 tier's figures, written to compare_llamacpp_avx2.md.
# ENIGMA_BIN / LLAMACPP_DIR (the folder holding llama-bench and llama-simple) name prebuilt binaries and skip
# the builds. llama.cpp's tools find their shared libraries in the build folder by absolute path: point
# LLAMACPP_DIR at the bin/ of a build where it was built, or set LD_LIBRARY_PATH for a copy.
# A 15M model's context is 256 tokens, so its pp512 is not run: it would run past the positions the model
# has (enigma refuses to).
#
# Writes benches/results/compare_llamacpp.md (commit, CPU, date, the command with every knob, both builds,
# the table, every round), which README.md quotes; RESULTS_NOTE="..." adds a note line (e.g. the load).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
. benches/random_models.sh

# Pinned so that a rerun measures the same llama.cpp (llama-cpp-python vendors one llama.cpp commit).
LLAMA_CPP_PYTHON_VERSION=0.3.36
GGUF_VERSION=0.19.0

CHECK_ONLY=0
[ "${1:-}" = "--check-only" ] && CHECK_ONLY=1
SHARED="${ENIGMA_SHARED:-$(cd .. && pwd)/shared}"
ROUNDS="${ROUNDS:-5}"
SHAPES="${SHAPES:-15M 110M}"
THREADS="${THREADS:-1 2}"
DTYPES="${DTYPES:-f32 q8_0 q4_0}"
PROMPTS="${PROMPTS:-128 512}"
GEN="${GEN:-128}"
TIER="${TIER:-native}"
WORK="${WORK:-target/compare}"
mkdir -p "$WORK"

case "$TIER" in
    native) cmake_tier=(-DGGML_NATIVE=ON); LLAMACPP_BUILD=target/llamacpp/build; RESULTS_NAME=compare_llamacpp ;;
    # GGML_NATIVE=OFF alone would build a generic binary; name the AVX2 tier's features explicitly.
    avx2) cmake_tier=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
                      -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX_VNNI=OFF)
          LLAMACPP_BUILD=target/llamacpp/build-avx2; RESULTS_NAME=compare_llamacpp_avx2
          export ENIGMA_KERNELS=avx2 ;;
    *) echo "TIER must be native or avx2, not $TIER" >&2; exit 2 ;;
esac

python3 -c 'import numpy' 2>/dev/null || pip install --quiet numpy
python3 -c "from importlib.metadata import version; import sys; sys.exit(version('gguf') != '$GGUF_VERSION')" 2>/dev/null \
    || pip install --quiet "gguf==$GGUF_VERSION"

enigma_binary

build_llamacpp() {
    local root=target/llamacpp src build start
    src="$root/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
    build="$LLAMACPP_BUILD"
    if [ ! -f "$src/CMakeLists.txt" ]; then
        mkdir -p "$root/dl"
        # Only the sdist is wanted: --no-binary for this one package (not :all:, which would also compile its
        # build dependencies, cmake among them, from source just to read its metadata).
        pip download --quiet --no-deps --no-binary llama-cpp-python -d "$root/dl" \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
        tar -xzf "$root/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$root"
    fi
    command -v cmake >/dev/null || pip install --quiet cmake
    start=$(date +%s)
    # No curl (nothing is downloaded at run time), no tests, no server: only the two tools this script runs.
    cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF "${cmake_tier[@]}" >"$build.log" 2>&1
    cmake --build "$build" -j "$(nproc)" --target llama-bench llama-simple >>"$build.log" 2>&1 \
        || { tail -n 30 "$build.log" >&2; exit 1; }
    echo "llama.cpp ($TIER) built in $(( $(date +%s) - start )) s; log: $build.log" >&2
}
L="${LLAMACPP_DIR:-$LLAMACPP_BUILD/bin}"
if [ -z "${LLAMACPP_DIR:-}" ] && { [ ! -x "$L/llama-bench" ] || [ ! -x "$L/llama-simple" ]; }; then
    build_llamacpp
fi

# --- Greedy parity on stories260K: the same text from the same prompt, f32 on both sides. ---
PARITY_PROMPT="Once upon a time"
PARITY_N=64
s260="$WORK/stories260K-f32"
[ -f "$s260.enigma" ] || "$E" import llama2c "$SHARED/models/stories260K.bin" --tokenizer "$SHARED/models/tok512.bin" \
    -o "$s260.enigma" --quantize f32
[ -f "$s260.gguf" ] || python3 benches/llama2c_to_gguf.py "$SHARED/models/stories260K.bin" "$SHARED/models/tok512.bin" \
    "$s260.gguf" --type f32
python3 benches/llama2c_to_gguf.py --same-bytes "$s260.gguf" "$s260.enigma"
"$E" run -m "$s260.enigma" -p "$PARITY_PROMPT" -n "$PARITY_N" --temp 0 --threads 1 >"$WORK/parity-enigma.txt" 2>/dev/null
"$L/llama-simple" -m "$s260.gguf" -n "$PARITY_N" "$PARITY_PROMPT" >"$WORK/parity-llamacpp.txt" 2>"$WORK/parity-llamacpp.log"
parity=$(python3 - "$WORK/parity-enigma.txt" "$WORK/parity-llamacpp.txt" "$SHARED/reference/stories260K/greedy_n256_once_upon_a_time.txt" <<'PY'
import sys
# Both print the prompt, then what they generated; llama-simple also prints BOS as "<s>" and SentencePiece's
# leading space. Neither stops early here: stories260K does not emit EOS within these tokens.
def norm(path):
    t = open(path, encoding="utf-8").read()
    return t.removeprefix("<s>").strip()
e, l, ref = norm(sys.argv[1]), norm(sys.argv[2]), norm(sys.argv[3])
ok = e == l and len(e) > 100
print(f"{'same' if ok else 'DIFFERENT'} greedy text ({len(e)} and {len(l)} characters); "
      f"{'a prefix of' if ref.startswith(e) else 'NOT a prefix of'} llama2.c run.c's reference output")
sys.exit(0 if ok else 1)
PY
) || { echo "greedy parity failed: $parity; see $WORK/parity-enigma.txt and $WORK/parity-llamacpp.txt" >&2; exit 1; }
echo "stories260K greedy parity, $PARITY_N tokens from \"$PARITY_PROMPT\": $parity" >&2
[ "$CHECK_ONLY" = 1 ] && exit 0

# --- The benchmark models. ---
random_checkpoints "$SHAPES"
for s in $SHAPES; do
    for q in $DTYPES; do
        m="$WORK/r$s-$q"
        random_model "$s" "$q" "$m.enigma"
        [ -f "$m.gguf" ] || python3 benches/llama2c_to_gguf.py "$WORK/models/r$s.bin" "$SHARED/models/tokenizer.bin" \
            "$m.gguf" --type "$q"
        # The fairness claim of the results file, checked: both engines read the same bytes of weights.
        python3 benches/llama2c_to_gguf.py --same-bytes "$m.gguf" "$m.enigma"
    done
done

# The prompt lengths that fit a shape's context (gen_llama2c_ckpt.py's seq_len, read from the header).
prompts_for() {
    local seq p out=""
    seq=$(python3 -c 'import struct,sys; print(struct.unpack("<7i", open(sys.argv[1],"rb").read(28))[6])' "$WORK/models/r$1.bin")
    for p in $PROMPTS; do [ "$p" -lt "$seq" ] && out="$out${out:+,}$p"; done
    echo "$out"
}

command="ROUNDS=$ROUNDS SHAPES=\"$SHAPES\" THREADS=\"$THREADS\" DTYPES=\"$DTYPES\" PROMPTS=\"$PROMPTS\" GEN=$GEN TIER=$TIER bash benches/compare_llamacpp.sh"
# A run of 2 threads alone keeps its own file, beside the 1-thread one (a machine is seldom quiet for both).
[ "$THREADS" = 2 ] && RESULTS_NAME="${RESULTS_NAME}_2t"
results_begin "$RESULTS_NAME" "Prefill and decode speed: Enigma Engine against llama.cpp" "$command"

results="$WORK/results-llamacpp.txt"
: > "$results"
run_enigma() {  # shape dtype threads round
    local p out
    for p in $(prompts_for "$1" | tr , ' '); do
        # tg is timed in the first call only (one prefill and one decode per call: the call for pp512 decodes
        # a single token). Parsed after the engine exits, so a parser never shares the cores with a run.
        out=$("$E" bench -m "$WORK/r$1-$2.enigma" --threads "$3" --prompt-tokens "$p" \
            --gen-tokens "$([ "$p" = "${PROMPTS%% *}" ] && echo "$GEN" || echo 1)" --rounds 1 --json)
        python3 - "$out" "$1" "$2" "$3" "$4" "$p" "$GEN" "${PROMPTS%% *}" <<'PY' | tee -a "$results"
import json, sys
j = json.loads(sys.argv[1]); s, q, t, r, p, g, first = sys.argv[2:]
assert j["prompt_tokens"] == int(p), f"enigma measured {j['prompt_tokens']} prompt tokens, not {p}"
print(f"round {r} {s} {q} threads {t} enigma pp{p} {j['prompt_tokens_per_s']:.2f} kernels {j['kernels']}")
if p == first:
    assert j["gen_tokens"] == int(g)
    print(f"round {r} {s} {q} threads {t} enigma tg{g} {j['gen_tokens_per_s']:.2f} kernels {j['kernels']}")
PY
    done
}
run_llamacpp() {  # shape dtype threads round
    local out
    # One process for the three tests, as llama-bench is meant to be run; it warms up before each test
    # (enigma's loader has already read every weight into memory by the time its bench starts).
    out=$("$L/llama-bench" -m "$WORK/r$1-$2.gguf" -t "$3" -p "$(prompts_for "$1")" -n "$GEN" -r 1 -o json 2>/dev/null)
    python3 - "$out" "$1" "$2" "$3" "$4" "$WORK/llamacpp-build.json" <<'PY' | tee -a "$results"
import json, sys
rows = json.loads(sys.argv[1]); s, q, t, r, info = sys.argv[2:]
for j in rows:
    test = f"pp{j['n_prompt']}" if j["n_gen"] == 0 else f"tg{j['n_gen']}"
    print(f"round {r} {s} {q} threads {t} llamacpp {test} {j['avg_ts']:.2f} type {j['type_k']}")
json.dump({k: rows[0].get(k) for k in ("build_commit", "build_number", "cpu_info", "backends", "flash_attn",
                                        "n_batch", "n_ubatch", "type_k", "repack")}, open(info, "w"))
PY
}

for r in $(seq 1 "$ROUNDS"); do
    for s in $SHAPES; do
        for q in $DTYPES; do
            for t in $THREADS; do
                if [ $((r % 2)) = 1 ]; then run_enigma "$s" "$q" "$t" "$r"; run_llamacpp "$s" "$q" "$t" "$r"
                else run_llamacpp "$s" "$q" "$t" "$r"; run_enigma "$s" "$q" "$t" "$r"; fi
            done
        done
    done
done

kernels=$(sed -n 's/.* kernels \([a-z0-9_]*\)$/\1/p' "$results" | sort -u | tr '\n' ' ')
llama_info=$(python3 - "$WORK/llamacpp-build.json" "$LLAMA_CPP_PYTHON_VERSION" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
fa = {-1: "auto", 0: "off", 1: "on"}.get(j["flash_attn"], j["flash_attn"])
print(f"llama.cpp {j['build_commit']} from llama-cpp-python {sys.argv[2]}: backends {j['backends']}, "
      f"flash attention {fa}, n_batch {j['n_batch']}, n_ubatch {j['n_ubatch']}, KV cache {j['type_k']} "
      f"(enigma's: f32), weights repacked at load: {'yes' if j['repack'] else 'no'} (its defaults)")
PY
)
results_line "Random-weight llama2.c checkpoints (\`gen_llama2c_ckpt.py\`); ppN: a prefill of N tokens, tgN: N tokens decoded one at a time, as llama-bench names its tests; engines alternating within each round, the first one alternating between rounds. Medians over the rounds; ratio = enigma / llama.cpp (above 1: enigma faster)."
results_line ""
results_line "- enigma: kernel tier ${kernels% }; \`enigma bench --rounds 1\` per test."
results_line "- $llama_info; \`llama-bench -r 1\` (it warms up before each test); built with TIER=$TIER (\`${cmake_tier[*]}\`)."
results_line "- The same weights on both sides, byte for byte (checked before timing): GGUF files written by \`benches/llama2c_to_gguf.py\` with gguf $GGUF_VERSION (not llama-quantize, which picks other types for some tensors), whose q8_0/q4_0 blocks are identical to \`enigma import --quantize\`'s. Norms f32; q8_0 models: every matrix q8_0, the embedding (which is also the classifier) too; q4_0 models: layer matrices q4_0, embedding/classifier q8_0."
results_line "- Greedy parity before timing: stories260K f32, $PARITY_N tokens from \"$PARITY_PROMPT\": $parity."
results_line ""

summary=$(python3 - "$results" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(lambda: {"enigma": [], "llamacpp": []})
for line in open(sys.argv[1]):
    f = line.split()
    rows[(f[2], f[3], f[7], int(f[5]))][f[6]].append(float(f[8]))
order = lambda k: (int(k[0].rstrip("MK")) * (1000 if k[0].endswith("M") else 1), ["f32", "q8_0", "q4_0"].index(k[1]),
                   k[2][:2] != "pp", int(k[2][2:]), k[3])
n = len(next(iter(rows.values()))["enigma"])
print(f"{'shape':>5} {'dtype':>5} {'test':>6} {'thr':>3} {'enigma tok/s':>13} {'llama.cpp tok/s':>16} {'ratio':>6}  (medians of {n} rounds)")
for k in sorted(rows, key=order):
    e, l = statistics.median(rows[k]["enigma"]), statistics.median(rows[k]["llamacpp"])
    print(f"{k[0]:>5} {k[1]:>5} {k[2]:>6} {k[3]:>3} {e:>13.1f} {l:>16.1f} {e / l:>6.2f}")
PY
)
printf '%s\n' "$summary"
printf '%s\n' "$summary" | results_block
results_line "Every round (tok/s):"
results_line ""
results_block <"$results"
results_end
