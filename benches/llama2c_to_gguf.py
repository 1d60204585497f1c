#!/usr/bin/env python3
"""Converts a llama2.c checkpoint and its tokenizer.bin to a GGUF file that llama.cpp loads, so that
benches/compare_llamacpp.sh runs both engines on the same weights.

    python3 benches/llama2c_to_gguf.py MODEL.bin TOKENIZER.bin OUT.gguf [--type f32|q8_0|q4_0]
    python3 benches/llama2c_to_gguf.py --self-test      # a tiny random checkpoint through the converter and back
    python3 benches/llama2c_to_gguf.py --same-bytes OUT.gguf MODEL.enigma   # every tensor stored identically?

Needs numpy and the pip `gguf` package (the one compare_llamacpp.sh pins). Only llama2.c's legacy layout is
read (a header of 7 int32, then f32 weights: what export.py's legacy_export, run.c and gen_llama2c_ckpt.py use);
a negative vocab_size means the classifier is stored after the RoPE tables instead of shared with the embedding.

The tensors get the dtypes that `enigma import llama2c --quantize TYPE` gives them, so that both engines read
the same bytes per token: norms stay f32; with q8_0 every matrix is q8_0; with q4_0 the layers' matrices are
q4_0 while the embedding and a separate classifier stay q8_0 (enigma's rule, runtime-std/src/quantize.rs); a
matrix whose rows are not whole 32-element blocks stays f32 on both sides. Quantization is gguf.quants', which
reproduces ggml's reference q8_0 / q4_0 rounding. llama-quantize is not used: it picks types per tensor by its
own rules (e.g. q6_K for the output of a q4_0 model), which would not match.

q and k are written as llama2.c stores them: llama2.c's RoPE rotates adjacent pairs, which is llama.cpp's
"normal" RoPE for the llama architecture, so unlike Hugging Face checkpoints they need no permutation (the
greedy parity check in compare_llamacpp.sh is what shows this holds).
"""
import argparse
import os
import struct
import sys
import tempfile

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as QT
except ImportError:
    sys.exit("llama2c_to_gguf.py needs the pip `gguf` package: pip install gguf")

# llama2.c's run.c hard-codes these ids; its tokenizer.bin marks BOS/EOS with newlines around them.
UNK, BOS, EOS = 0, 1, 2
RMS_EPS = 1e-5  # run.c's rmsnorm
BLOCK = 32  # elements per q8_0 / q4_0 block
FILE_TYPE = {"f32": gguf.LlamaFileType.ALL_F32, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}


def read_checkpoint(path):
    """The config and the named f32 tensors of a legacy llama2.c checkpoint, as views of one memory map."""
    with open(path, "rb") as f:
        head = f.read(28)
    if len(head) < 28:
        raise ValueError(f"{path}: shorter than llama2.c's 28-byte header")
    dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", head)
    if struct.unpack("<I", head[:4])[0] == 0x616B3432:
        raise ValueError(f"{path}: a versioned llama2.c export (magic ak42); only the legacy layout is read")
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, layers, heads, kv_heads, vocab, seq) <= 0 or dim % heads or heads % kv_heads:
        raise ValueError(f"{path}: implausible header {dim, hidden, layers, heads, kv_heads, vocab, seq}")
    hs = dim // heads
    kv = kv_heads * hs
    # run.c's memory_map_weights order; the two RoPE tables (seq x hs/2 each) are skipped, as run.c does.
    shapes = [("tok_embeddings", (vocab, dim)), ("rms_att", (layers, dim)),
              ("wq", (layers, dim, dim)), ("wk", (layers, kv, dim)), ("wv", (layers, kv, dim)),
              ("wo", (layers, dim, dim)), ("rms_ffn", (layers, dim)),
              ("w1", (layers, hidden, dim)), ("w2", (layers, dim, hidden)), ("w3", (layers, hidden, dim)),
              ("rms_final", (dim,)), ("freq_cis", (2, seq, hs // 2))]
    if not shared:
        shapes.append(("wcls", (vocab, dim)))
    need = sum(int(np.prod(s)) for _, s in shapes)
    data = np.memmap(path, dtype="<f4", mode="r", offset=28)
    if data.size != need:
        raise ValueError(f"{path}: {data.size} floats after the header, the header implies {need}")
    out, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        out[name] = data[at:at + n].reshape(shape)
        at += n
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab, seq=seq,
               shared=shared)
    return cfg, out


def read_tokenizer(path, vocab):
    """llama2.c's tokenizer.bin as GGUF's (tokens, scores, types) for a SentencePiece ("llama") vocabulary."""
    with open(path, "rb") as f:
        blob = f.read()
    at = 4  # max_token_length: llama.cpp has no use for it
    tokens, scores, types = [], [], []
    for i in range(vocab):
        if at + 8 > len(blob):
            raise ValueError(f"{path}: ends after {i} tokens; the checkpoint has {vocab}")
        score, n = struct.unpack_from("<fi", blob, at)
        text = blob[at + 8:at + 8 + n].decode("utf-8")
        at += 8 + n
        # llama2.c's export replaced SentencePiece's U+2581 word marker by a space and wrapped BOS/EOS in
        # newlines; llama.cpp's tokenizer expects the pieces as SentencePiece wrote them.
        if i == BOS:
            text, kind = "<s>", gguf.TokenType.CONTROL
        elif i == EOS:
            text, kind = "</s>", gguf.TokenType.CONTROL
        elif i == UNK:
            text, kind = "<unk>", gguf.TokenType.UNKNOWN
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kind = gguf.TokenType.BYTE
        else:
            text, kind = text.replace(" ", "\u2581"), gguf.TokenType.NORMAL
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    return tokens, scores, types


def tensor_type(name, rows_len, want):
    """enigma's dtype_for: norms f32; q4_0 models keep embedding and classifier at q8_0; partial blocks f32."""
    if name.endswith("_norm.weight") or want == "f32" or rows_len % BLOCK:
        return "f32"
    if want == "q4_0" and name in ("token_embd.weight", "output.weight"):
        return "q8_0"
    return want


def llama_writer(ckpt, tokenizer, out_path):
    """A GGUFWriter holding the llama keys and the vocabulary of a llama2.c checkpoint, with the checkpoint's
    config and tensors (also used by llama2c_to_kquants_gguf.py)."""
    cfg, w = read_checkpoint(ckpt)
    tokens, scores, types = read_tokenizer(tokenizer, cfg["vocab"])
    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_name(os.path.splitext(os.path.basename(ckpt))[0])
    writer.add_context_length(cfg["seq"])
    writer.add_embedding_length(cfg["dim"])
    writer.add_block_count(cfg["layers"])
    writer.add_feed_forward_length(cfg["hidden"])
    writer.add_head_count(cfg["heads"])
    writer.add_head_count_kv(cfg["kv_heads"])
    writer.add_rope_dimension_count(cfg["dim"] // cfg["heads"])
    writer.add_rope_freq_base(10000.0)  # run.c's
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(cfg["vocab"])
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    # run.c prepends BOS and no EOS; said explicitly so that no llama.cpp default decides it.
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    return writer, cfg, w


def named_tensors(cfg, w):
    """(GGUF name, tensor) of every tensor in llama.cpp's order."""
    named = [("token_embd.weight", w["tok_embeddings"])]
    for l in range(cfg["layers"]):
        named += [(f"blk.{l}.attn_norm.weight", w["rms_att"][l]),
                  (f"blk.{l}.attn_q.weight", w["wq"][l]), (f"blk.{l}.attn_k.weight", w["wk"][l]),
                  (f"blk.{l}.attn_v.weight", w["wv"][l]), (f"blk.{l}.attn_output.weight", w["wo"][l]),
                  (f"blk.{l}.ffn_norm.weight", w["rms_ffn"][l]),
                  (f"blk.{l}.ffn_gate.weight", w["w1"][l]), (f"blk.{l}.ffn_down.weight", w["w2"][l]),
                  (f"blk.{l}.ffn_up.weight", w["w3"][l])]
    named.append(("output_norm.weight", w["rms_final"]))
    # A shared classifier is left out: llama.cpp then multiplies by token_embd, as run.c does.
    if not cfg["shared"]:
        named.append(("output.weight", w["wcls"]))
    return named


def convert(ckpt, tokenizer, out_path, want):
    writer, cfg, w = llama_writer(ckpt, tokenizer, out_path)
    writer.add_file_type(FILE_TYPE[want])
    counts = {}
    for name, t in named_tensors(cfg, w):
        # numpy (out, in) row-major is GGUF's ne = [in, out]: the writer reverses the shape.
        t = np.ascontiguousarray(t, dtype=np.float32)
        ty = tensor_type(name, t.shape[-1], want)
        counts[ty] = counts.get(ty, 0) + 1
        if ty == "f32":
            writer.add_tensor(name, t)
        else:
            qt = QT.Q8_0 if ty == "q8_0" else QT.Q4_0
            writer.add_tensor(name, gguf.quants.quantize(t, qt), raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return cfg, counts


def same_bytes(gguf_path, enigma_path):
    """Whether every tensor of the GGUF file appears byte for byte in the .enigma file: then both engines
    read the very same weights (quantized blocks included) and only their kernels differ. A plain search is
    enough: a tensor's bytes are far too long to appear by chance."""
    blob = open(enigma_path, "rb").read()
    tensors = gguf.GGUFReader(gguf_path).tensors
    missing = [t.name for t in tensors if blob.find(t.data.tobytes()) < 0]
    if missing:
        sys.exit(f"{gguf_path}: {len(missing)} of {len(tensors)} tensors are not stored as in {enigma_path}: "
                 + ", ".join(missing[:5]))
    types = sorted({t.tensor_type.name.lower() for t in tensors})
    print(f"{os.path.basename(gguf_path)}: all {len(tensors)} tensors ({', '.join(types)}) byte-identical "
          f"to {os.path.basename(enigma_path)}'s")


def self_test():
    """Writes a tiny random checkpoint (unshared classifier, GQA, a hidden size that is not whole blocks) and
    its tokenizer, converts it at every type and reads the GGUF back: names, shapes, types, tokenizer and
    values (f32 exact, quantized within a block's rounding)."""
    rng = np.random.default_rng(7)
    dim, hidden, layers, heads, kv_heads, vocab, seq = 64, 80, 2, 4, 2, 300, 16
    hs, kv = dim // heads, kv_heads * dim // heads
    tensors = [rng.standard_normal(s).astype(np.float32) for s in
               [(vocab, dim), (layers, dim), (layers, dim, dim), (layers, kv, dim), (layers, kv, dim),
                (layers, dim, dim), (layers, dim), (layers, hidden, dim), (layers, dim, hidden),
                (layers, hidden, dim), (dim,), (2, seq, hs // 2), (vocab, dim)]]
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    pieces += [(" w%d" % i).encode() for i in range(vocab - len(pieces))]
    with tempfile.TemporaryDirectory() as d:
        ck, tk = os.path.join(d, "m.bin"), os.path.join(d, "t.bin")
        with open(ck, "wb") as f:
            f.write(struct.pack("<7i", dim, hidden, layers, heads, kv_heads, -vocab, seq))
            for t in tensors:
                f.write(t.tobytes())
        with open(tk, "wb") as f:
            f.write(struct.pack("<i", max(map(len, pieces))))
            for i, p in enumerate(pieces):
                f.write(struct.pack("<fi", -i, len(p)) + p)
        for want in ("f32", "q8_0", "q4_0"):
            out = os.path.join(d, f"m-{want}.gguf")
            convert(ck, tk, out, want)
            r = gguf.GGUFReader(out)
            f = {k: v.contents() for k, v in r.fields.items()}
            assert f["general.architecture"] == "llama" and f["llama.attention.head_count_kv"] == kv_heads
            assert f["tokenizer.ggml.tokens"][:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
            assert f["tokenizer.ggml.tokens"][-1] == "\u2581w%d" % (vocab - 260)
            assert f["tokenizer.ggml.token_type"][:4] == [2, 3, 3, 6]
            t = {x.name: x for x in r.tensors}
            assert len(t) == 2 + 9 * layers + 1, sorted(t)
            types = {n: x.tensor_type.name for n, x in t.items()}
            exp_q = {"f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0"}[want]
            assert types["blk.1.attn_q.weight"] == exp_q, types
            assert types["blk.1.ffn_down.weight"] == "F32"  # rows of 80: not whole blocks
            assert types["output.weight"] == ("Q8_0" if want == "q4_0" else exp_q)
            assert types["blk.0.ffn_norm.weight"] == "F32"
            got = gguf.quants.dequantize(t["blk.1.attn_k.weight"].data, t["blk.1.attn_k.weight"].tensor_type)
            ref = tensors[3][1]
            tol = {"f32": 0.0, "q8_0": 0.02, "q4_0": 0.35}[want] * np.abs(ref).max()
            assert got.shape == ref.shape and np.abs(got - ref).max() <= tol, (want, np.abs(got - ref).max())
    print("llama2c_to_gguf.py self-test: ok (f32, q8_0, q4_0 written and read back)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("tokenizer", nargs="?")
    ap.add_argument("output", nargs="?")
    ap.add_argument("--type", choices=sorted(FILE_TYPE), default="f32")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--same-bytes", nargs=2, metavar=("GGUF", "ENIGMA"))
    a = ap.parse_args()
    if a.self_test:
        return self_test()
    if a.same_bytes:
        return same_bytes(*a.same_bytes)
    if not (a.checkpoint and a.tokenizer and a.output):
        ap.error("CHECKPOINT TOKENIZER OUTPUT are required (or --self-test)")
    tmp = a.output + ".part"  # a crash leaves no half-written file where the bench script looks
    cfg, counts = convert(a.checkpoint, a.tokenizer, tmp, a.type)
    os.replace(tmp, a.output)
    print(f"wrote {a.output}: {cfg['layers']} layers, dim {cfg['dim']}, vocab {cfg['vocab']}, "
          f"tensors {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}", file=sys.stderr)


if __name__ == "__main__":
    main()
