#!/usr/bin/env python3
"""GGUF files written and read by the pip `gguf` package (llama.cpp's own Python library), for the Rust tests in
host-tools/models/tests/gguf.rs and host-tools/cli/tests/gguf.rs.

    gguf_pip.py quants OUT_DIR        # quants.gguf: one tensor per type; expected.gguf: gguf.quants.dequantize
                                      # of each, as f32 tensors of the same names
    gguf_pip.py model OUT_DIR [--big] # model.gguf: a random small Llama, its matrices in a Q4_K_M-style mix
                                      # (q4_K, with attn_v / ffn_down / output in q6_K) plus expected.gguf (f32)
    gguf_pip.py variants OUT_DIR      # model.gguf, and the same as split-0000N-of-0000M.gguf parts (8 tensors
                                      # each) and as big-endian.gguf
    gguf_pip.py check EXPORTED.gguf LAYERS DIM HIDDEN KV_DIM VOCAB [TIED]
                                      # what `enigma export gguf` wrote, read back by GGUFReader: names,
                                      # shapes, types, the llama keys and the vocabulary; prints a JSON summary

The pip package can quantize f16, bf16, q8_0 and q4_0 but not the k-quants (it only dequantizes those), so the
k-quant tensors are random super-blocks with finite, small f16 scales: every bit pattern of the rest is valid.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

# (type, byte offsets of the f16 scales inside one block)
KQUANT_SCALES = {
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}


def random_kquant(rng, qtype, rows, cols):
    """Random blocks of `qtype` for a (rows, cols) matrix, as the uint8 array GGUFWriter takes raw."""
    block, size = GGML_QUANT_SIZES[qtype]
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    for at in KQUANT_SCALES[qtype]:
        scale = rng.uniform(0.0005, 0.02, size=nb).astype(np.float16)
        raw[:, at:at + 2] = scale.view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, cols // block * size)


def stored(rng, qtype, rows, cols, scale=0.1):
    """A (rows, cols) tensor of `qtype` as GGUFWriter takes it, and its dequantized f32 values."""
    if qtype in KQUANT_SCALES:
        raw = random_kquant(rng, qtype, rows, cols)
    else:
        x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        raw = x if qtype == T.F32 else gguf.quants.quantize(x, qtype)
    values = raw if qtype == T.F32 else gguf.quants.dequantize(raw, qtype)
    return raw, np.asarray(values, dtype=np.float32).reshape(rows, cols)


def add(w, name, raw, qtype):
    if qtype == T.F32:
        w.add_tensor(name, raw)
    else:
        w.add_tensor(name, raw, raw_dtype=qtype)


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quants(out):
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(os.path.join(out, "quants.gguf"), "llama")
    e = gguf.GGUFWriter(os.path.join(out, "expected.gguf"), "llama")
    types = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
    for qtype in types:
        raw, values = stored(rng, qtype, 3, 512)
        name = qtype.name.lower()
        add(w, name, raw, qtype)
        e.add_tensor(name, values)
    finish(w)
    finish(e)


def vocabulary(n):
    """A SentencePiece-style vocabulary: <unk>, <s>, </s>, the 256 byte pieces, letters, then merges."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    letters = "\u2581abcdefghijklmnopqrstuvwxyz"
    tokens += list(letters)
    pieces = [a + b for a in letters for b in letters]
    tokens += pieces[: n - len(tokens)]
    types += [1] * (n - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    return tokens[:n], scores, types


def model(out, big, name="model.gguf", **writer_options):
    rng = np.random.default_rng(11)
    if big:  # the 15M shape of llama2.c's stories15M (benches/random_models.sh)
        dim, hidden, layers, heads, kv_heads, vocab, ctx = 288, 768, 6, 6, 6, 32000, 256
    else:
        dim, hidden, layers, heads, kv_heads, vocab, ctx = 256, 512, 2, 4, 2, 512, 64
    hs = dim // heads
    w = gguf.GGUFWriter(os.path.join(out, name), "llama", **writer_options)
    e = gguf.GGUFWriter(os.path.join(out, "expected.gguf"), "llama")
    for x in (w, e):
        x.add_context_length(ctx)
        x.add_embedding_length(dim)
        x.add_block_count(layers)
        x.add_feed_forward_length(hidden)
        x.add_head_count(heads)
        x.add_head_count_kv(kv_heads)
        x.add_rope_dimension_count(hs)
        x.add_layer_norm_rms_eps(1e-5)
        x.add_rope_freq_base(10000.0)
        x.add_tokenizer_model("llama")
        tokens, scores, types = vocabulary(vocab) if not big else big_vocabulary(vocab)
        x.add_token_list(tokens)
        x.add_token_scores(scores)
        x.add_token_types(types)
        x.add_bos_token_id(1)
        x.add_eos_token_id(2)
        x.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def put(name, qtype, rows, cols, scale=0.1):
        # A row of k-quants must be whole super-blocks of 256; llama.cpp falls back the same way.
        if qtype in KQUANT_SCALES and cols % 256 != 0:
            qtype = T.Q8_0
        raw, values = stored(rng, qtype, rows, cols, scale)
        add(w, name, raw, qtype)
        e.add_tensor(name, values)

    put("token_embd.weight", T.Q4_K, vocab, dim)
    for l in range(layers):
        ones = np.ones(dim, dtype=np.float32)
        for x in (w, e):
            x.add_tensor(f"blk.{l}.attn_norm.weight", ones)
            x.add_tensor(f"blk.{l}.ffn_norm.weight", ones)
        put(f"blk.{l}.attn_q.weight", T.Q4_K, dim, dim)
        put(f"blk.{l}.attn_k.weight", T.Q4_K, kv_heads * hs, dim)
        put(f"blk.{l}.attn_v.weight", T.Q6_K, kv_heads * hs, dim)
        put(f"blk.{l}.attn_output.weight", T.Q4_K, dim, dim)
        put(f"blk.{l}.ffn_gate.weight", T.Q4_K, hidden, dim)
        put(f"blk.{l}.ffn_up.weight", T.Q4_K, hidden, dim)
        # llama.cpp's Q4_K_M gives some layers' ffn_down (and attn_v) more bits: a tensor of mixed types.
        put(f"blk.{l}.ffn_down.weight", T.Q6_K if l == 0 else T.Q4_K, dim, hidden)
    for x in (w, e):
        x.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    put("output.weight", T.Q6_K, vocab, dim)
    finish(w)
    finish(e)


def big_vocabulary(n):
    tokens, scores, types = vocabulary(259 + 27 + 27 * 27)
    tokens += [f"tok{i}" for i in range(n - len(tokens))]
    scores += [-1e6 - i for i in range(n - len(scores))]
    types += [1] * (n - len(types))
    return tokens, scores, types


def check(path, layers, dim, hidden, kv_dim, vocab, tied):
    r = gguf.GGUFReader(path)
    fields = r.fields

    def scalar(key):
        f = fields[key]
        return f.parts[f.data[0]].tolist()[0]

    def string(key):
        f = fields[key]
        return bytes(f.parts[f.data[0]]).decode()

    assert r.fields["GGUF.version"].parts[-1][0] == 3, "not GGUF v3"
    assert string("general.architecture") == "llama"
    for key, want in [("llama.block_count", layers), ("llama.embedding_length", dim),
                      ("llama.feed_forward_length", hidden)]:
        assert scalar(key) == want, f"{key} = {scalar(key)}, want {want}"
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == vocab, f"{len(tokens.data)} tokens, want {vocab}"
    model = string("tokenizer.ggml.model")
    want = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    if not tied:
        want["output.weight"] = (vocab, dim)
    for l in range(layers):
        for n, shape in [("attn_norm", (dim,)), ("ffn_norm", (dim,)), ("attn_q", (dim, dim)),
                         ("attn_k", (kv_dim, dim)), ("attn_v", (kv_dim, dim)), ("attn_output", (dim, dim)),
                         ("ffn_gate", (hidden, dim)), ("ffn_up", (hidden, dim)), ("ffn_down", (dim, hidden))]:
            want[f"blk.{l}.{n}.weight"] = shape
    got = {t.name: t for t in r.tensors}
    assert set(got) == set(want), f"tensors differ: {sorted(set(got) ^ set(want))}"
    summary = {"model": model, "tensors": {}}
    for name, t in got.items():
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        assert shape == want[name], f"{name}: shape {shape}, want {want[name]}"
        values = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
        assert np.all(np.isfinite(values)), name
        summary["tensors"][name] = {
            "type": t.tensor_type.name.lower(),
            "sum": float(np.sum(values, dtype=np.float64)),
            "first": float(values[0]),
        }
    if model == "gpt2":
        assert "tokenizer.ggml.merges" in fields, "a gpt2 vocabulary without merges"
    print(json.dumps(summary))


def main():
    cmd = sys.argv[1]
    if cmd == "quants":
        quants(sys.argv[2])
    elif cmd == "model":
        model(sys.argv[2], "--big" in sys.argv[3:])
    elif cmd == "variants":
        # The same model split into parts of at most 8 tensors, and written big-endian.
        model(sys.argv[2], False, "split.gguf", split_max_tensors=8)
        model(sys.argv[2], False, "big-endian.gguf", endianess=gguf.GGUFEndian.BIG)
        model(sys.argv[2], False)
    elif cmd == "check":
        a = [int(x) for x in sys.argv[3:8]]
        check(sys.argv[2], *a, tied=len(sys.argv) > 8 and sys.argv[8] == "tied")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
