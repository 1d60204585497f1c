#!/usr/bin/env python3
"""Hugging Face model folders written with the pip `safetensors` and `tokenizers` packages, for the Rust tests
in host-tools/models/tests/hf.rs.

    hf_pip.py model OUT_DIR KIND DTYPE CORPUS
        KIND: bytelevel (GPT-2 style: ByteLevel with its regex), llama3 (Llama 3's Split regex, then ByteLevel
              without one) or spm (Llama 2 style: Metaspace, byte_fallback);
        DTYPE: f32 (untied lm_head), f16 or bf16 (tied to the embedding; numpy has no bfloat16, so bf16
              shards go through safetensors.serialize_file as raw bytes).
        Trains a BPE tokenizer with `tokenizers` on CORPUS (its first 1 MB, with a generated line of
        non-ASCII words after every 20th line and one of odd spacing and long numbers after every 20th other), writes a random small Llama (dim 64, 2 layers, 4 heads, 2 KV heads) as
        two safetensors shards and an index, config.json, tokenizer.json and tokenizer_config.json (with a
        chat template), and expected.json:
          ids, logits      a token sequence and numpy's forward of it in the HF layout (rotate_half RoPE on
                           the permuted q/k rows), every position's logits, in float64
          lines            the text's lines, each with `tokenizers`' ids (no special tokens added) and
                           `chunks`, the pre-tokenizer's split of the line as substrings
          specials         texts that spell the added tokens (BOS, EOS, ...), with `tokenizers`' ids
"""
import json
import os
import random
import sys

import numpy as np
import safetensors
from safetensors.numpy import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, CTX = 64, 128, 2, 4, 2, 128
VOCAB = 1000
THETA, EPS = 10000.0, 1e-5
TEXT_BYTES = 1_000_000

# Words of several scripts, so the text has 2-, 3- and 4-byte UTF-8 characters, some frequent enough to be
# merged and some so rare that only the bytes cover them.
UNICODE_WORDS = [
    "café", "naïve", "Zürich", "façade", "Ελληνικά", "αβγ", "русский", "язык", "日本語", "東京",
    "한국어", "עברית", "العربية", "हिन्दी", "🙂", "🚀✨", "€100", "½", "—", "“quoted”", "ß", "Ωmega",
]


LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def spacing_line(rng):
    """Runs of spaces and tabs, long numbers, contractions and punctuation: where regex splits cut."""
    parts = []
    for _ in range(rng.randint(4, 10)):
        word = rng.choice(["the", "LORD", "don't", "I'LL", "you've", "12345", "3.14159", "2024", "(verse)", "...", "--"])
        parts.append(rng.choice([" ", "  ", "   ", "\t", " \t "]) + word)
    return rng.choice(["", "  ", "\t"]) + "".join(parts) + rng.choice(["", " ", "   ", "!!"])


def corpus(path):
    """About TEXT_BYTES of the corpus, with a generated line of non-ASCII words after every 20th line and a
    line of odd spacing after every 20th other one."""
    with open(path, encoding="utf-8") as f:
        base = f.read(TEXT_BYTES)
    rng = random.Random(16)
    out = []
    for i, line in enumerate(base.split("\n")):
        out.append(line)
        if i % 20 == 19:
            words = [rng.choice(UNICODE_WORDS) for _ in range(rng.randint(3, 9))]
            out.append(" ".join(words) + rng.choice([".", "!", " ok", "?"]))
        if i % 20 == 9:
            out.append(spacing_line(rng))
    return "\n".join(out)


def train_tokenizer(kind, text):
    if kind in ("bytelevel", "llama3"):
        tok = Tokenizer(models.BPE())
        if kind == "llama3":
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        )
        bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    elif kind == "spm":
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
        # Llama 2's layout: <unk> <s> </s> then <0x00>..<0xFF> at ids 3..258; a small alphabet, so rare
        # characters go through byte fallback.
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            limit_alphabet=120,
            special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)],
        )
        bos, eos = "<s>", "</s>"
    else:
        sys.exit(f"unknown tokenizer kind {kind}")
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    if kind == "bytelevel":
        # GPT-2's: no BOS in front of the text.
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        # Llama 2's and Llama 3's: BOS in front.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok, bos, eos


def rmsnorm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def rope(x, theta):
    """transformers' apply_rotary_pos_emb: rotate_half pairs element i with i + head_size/2."""
    t, _, hd = x.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    freqs = np.arange(t, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rotated = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], axis=-1)
    return x * cos + rotated * sin


def forward(w, ids, tied):
    """LlamaForCausalLM's forward in float64, every position's logits."""
    g = {k: v.astype(np.float64) for k, v in w.items()}
    hd = DIM // HEADS
    x = g["model.embed_tokens.weight"][ids]
    t = len(ids)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        h = rmsnorm(x, g[p + "input_layernorm.weight"])
        q = (h @ g[p + "self_attn.q_proj.weight"].T).reshape(t, HEADS, hd)
        k = (h @ g[p + "self_attn.k_proj.weight"].T).reshape(t, KV_HEADS, hd)
        v = (h @ g[p + "self_attn.v_proj.weight"].T).reshape(t, KV_HEADS, hd)
        q, k = rope(q, THETA), rope(k, THETA)
        k = np.repeat(k, HEADS // KV_HEADS, axis=1)
        v = np.repeat(v, HEADS // KV_HEADS, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        out = np.einsum("hts,shd->thd", att, v).reshape(t, DIM)
        x = x + out @ g[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, g[p + "post_attention_layernorm.weight"])
        gate = h @ g[p + "mlp.gate_proj.weight"].T
        up = h @ g[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ g[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, g["model.norm.weight"])
    head = g["model.embed_tokens.weight"] if tied else g["lm_head.weight"]
    return x @ head.T


def weights(rng, vocab, dtype, tied):
    def mat(rows, cols, scale=0.1):
        return rng.uniform(-scale, scale, (rows, cols)).astype(dtype)

    def norm():
        return (1.0 + rng.uniform(-0.2, 0.2, DIM)).astype(dtype)

    hd = DIM // HEADS
    w = {"model.embed_tokens.weight": mat(vocab, DIM, 1.0), "model.norm.weight": norm()}
    if not tied:
        w["lm_head.weight"] = mat(vocab, DIM)
    for l in range(LAYERS):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = mat(HEADS * hd, DIM, 0.3)
        w[p + "self_attn.k_proj.weight"] = mat(KV_HEADS * hd, DIM, 0.3)
        w[p + "self_attn.v_proj.weight"] = mat(KV_HEADS * hd, DIM)
        w[p + "self_attn.o_proj.weight"] = mat(DIM, HEADS * hd)
        w[p + "mlp.gate_proj.weight"] = mat(HIDDEN, DIM)
        w[p + "mlp.up_proj.weight"] = mat(HIDDEN, DIM)
        w[p + "mlp.down_proj.weight"] = mat(DIM, HIDDEN)
    return w


def bf16(a):
    """float32 values rounded to bfloat16 (to nearest even), as the uint16 bit patterns and as float32."""
    bits = a.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded, (rounded.astype(np.uint32) << 16).view(np.float32)


def save_bf16(tensors, path):
    """A safetensors file of BF16 tensors (`tensors`: name -> uint16 bits), through the pip package's
    framework-free writer (its numpy one has no bfloat16)."""
    arrays = {k: np.ascontiguousarray(v.astype("<u2")) for k, v in tensors.items()}
    specs = {
        k: safetensors.TensorSpec(dtype="bfloat16", shape=list(a.shape), data_ptr=a.ctypes.data, data_len=a.nbytes)
        for k, a in arrays.items()
    }
    safetensors.serialize_file(specs, path, metadata={"format": "pt"})


def model(out, kind, dtype_name, corpus_path):
    os.makedirs(out, exist_ok=True)
    text = corpus(corpus_path)
    tok, bos, eos = train_tokenizer(kind, text)
    tok.save(os.path.join(out, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    tied = dtype_name != "f32"
    dtype = {"f32": np.float32, "f16": np.float16, "bf16": np.float32}[dtype_name]
    w = weights(np.random.default_rng(16), vocab, dtype, tied)
    bits = {}
    if dtype_name == "bf16":
        for k in w:
            bits[k], w[k] = bf16(w[k])
    names = sorted(w)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    for file, part in shards.items():
        if bits:
            save_bf16({n: bits[n] for n in part}, os.path.join(out, file))
        else:
            save_file({n: w[n] for n in part}, os.path.join(out, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    index = {"metadata": {"total_size": sum(v.nbytes for v in w.values())}, "weight_map": weight_map}
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": DIM,
        "intermediate_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": vocab,
        "max_position_embeddings": CTX,
        "rope_theta": THETA,
        "rms_norm_eps": EPS,
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "torch_dtype": {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype_name],
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": eos, "chat_template": template}, f)
    ids = tok.encode("Once upon a time, a little fox found a café.", add_special_tokens=False).ids
    lines = []
    for line in text.split("\n"):
        if not line:
            continue
        chunks = [line[a:b] for _, (a, b) in tok.pre_tokenizer.pre_tokenize_str(line)]
        if "".join(chunks) != line:
            chunks = None
        lines.append({"text": line, "ids": tok.encode(line, add_special_tokens=False).ids, "chunks": chunks})
    special_texts = [
        f"{bos}Once upon a time, {eos}the end{eos}",
        f"In the beginning{bos} God {eos}\tcreated {bos}{bos}",
        f"{eos}",
        "a <0x41> and <unk>, not <s or s>",
    ]
    specials = [
        {"text": t, "ids": tok.encode(t, add_special_tokens=False).ids,
         "with_bos": tok.encode(t, add_special_tokens=True).ids}
        for t in special_texts
    ]
    expected = {"ids": ids, "logits": forward(w, ids, tied).tolist(), "lines": lines, "specials": specials,
                "bos": tok.token_to_id(bos),
                "eos": tok.token_to_id(eos), "template": template}
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "model":
        model(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
