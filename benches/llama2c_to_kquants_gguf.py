#!/usr/bin/env python3
"""Writes a llama2.c checkpoint (legacy layout, as ../shared/tools/gen_llama2c_ckpt.py makes them) and its
tokenizer.bin as a Q4_K_M-style GGUF file for benches/gguf_kquants.sh: matrices in q4_K, with attn_v and
ffn_down in q6_K on the layers llama.cpp's Q4_K_M gives more bits (its `use_more_bits`), a separate classifier in
q6_K, norms f32; a matrix whose rows are not whole super-blocks of 256 falls back to q8_0, as llama.cpp does.

    python3 benches/llama2c_to_kquants_gguf.py MODEL.bin TOKENIZER.bin OUT.gguf

The pip `gguf` package writes the file but only dequantizes k-quants, so the two quantizers below are this
script's own: a plain min/max fit per sub-block (not llama.cpp's iterative search, so its error is somewhat
larger than llama-quantize's, which does not matter for speed). Each tensor is checked by dequantizing it with
`gguf.quants.dequantize` and comparing with the f32 weights.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama2c_to_gguf import llama_writer, named_tensors  # noqa: E402

QK_K = 256


def f16_bytes(x):
    return np.asarray(x, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def quantize_q4_k(x):
    """(nb, 256) f32 -> (nb, 144) uint8: d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles."""
    nb = x.shape[0]
    sub = x.reshape(nb, 8, 32)
    lo = np.minimum(sub.min(axis=2), 0.0)
    hi = sub.max(axis=2)
    scale = (hi - lo) / 15.0
    mins = -lo
    d = scale.max(axis=1) / 63.0
    dmin = mins.max(axis=1) / 63.0
    d16, dmin16 = d.astype(np.float16).astype(np.float32), dmin.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.nan_to_num(np.rint(scale / d16[:, None])), 0, 63).astype(np.uint8)
        mq = np.clip(np.nan_to_num(np.rint(mins / dmin16[:, None])), 0, 63).astype(np.uint8)
        step = d16[:, None] * sc
        q = np.rint((sub + (dmin16[:, None] * mq)[:, :, None]) / step[:, :, None])
    q = np.clip(np.nan_to_num(q), 0, 15).astype(np.uint8).reshape(nb, 4, 2, 32)
    scales = np.zeros((nb, 12), np.uint8)
    scales[:, 0:4] = sc[:, 0:4] | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = mq[:, 0:4] | ((mq[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((mq[:, 4:8] & 0x0F) << 4)
    qs = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(nb, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), scales, qs], axis=1)


def quantize_q6_k(x):
    """(nb, 256) f32 -> (nb, 210) uint8: 128 bytes of low nibbles, 64 of high bits, 16 i8 scales, d."""
    nb = x.shape[0]
    sub = x.reshape(nb, 16, 16)
    scale = np.abs(sub).max(axis=2) / 31.0
    d = scale.max(axis=1) / 127.0
    d16 = d.astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.nan_to_num(np.rint(scale / d16[:, None])), -128, 127).astype(np.int8)
        step = d16[:, None] * sc.astype(np.float32)
        q = np.rint(sub / step[:, :, None])
    q = (np.clip(np.nan_to_num(q), -32, 31) + 32).astype(np.uint8).reshape(nb, 2, 4, 32)
    ql = np.zeros((nb, 2, 64), np.uint8)
    ql[:, :, :32] = (q[:, :, 0] & 0x0F) | ((q[:, :, 2] & 0x0F) << 4)
    ql[:, :, 32:] = (q[:, :, 1] & 0x0F) | ((q[:, :, 3] & 0x0F) << 4)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.view(np.uint8), f16_bytes(d)], axis=1)


QUANTIZERS = {T.Q4_K: quantize_q4_k, T.Q6_K: quantize_q6_k}


def stored(w, qtype):
    """(raw array for GGUFWriter, its type), checked against gguf.quants.dequantize."""
    rows, cols = w.shape
    if cols % QK_K != 0:
        qtype = T.Q8_0
    if qtype == T.Q8_0:
        raw = gguf.quants.quantize(w, qtype)
    else:
        raw = QUANTIZERS[qtype](w.reshape(-1, QK_K)).reshape(rows, -1)
    back = gguf.quants.dequantize(raw, qtype).reshape(rows, cols)
    err = np.sqrt(np.mean((back - w) ** 2)) / max(np.sqrt(np.mean(w ** 2)), 1e-12)
    assert err < 0.12, f"{qtype.name}: relative RMS error {err:.3f}"
    return raw, qtype


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def main():
    model, tok, out = sys.argv[1:4]
    w, cfg, t = llama_writer(model, tok, out)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    layers = cfg["layers"]
    counts = {}
    for name, arr in named_tensors(cfg, t):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1:
            w.add_tensor(name, arr)
            continue
        layer = int(name.split(".")[1]) if name.startswith("blk.") else 0
        more = name.endswith(("attn_v.weight", "ffn_down.weight")) and use_more_bits(layer, layers)
        qtype = T.Q6_K if more or name == "output.weight" else T.Q4_K
        raw, used = stored(arr, qtype)
        counts[used.name] = counts.get(used.name, 0) + 1
        w.add_tensor(name, raw, raw_dtype=used)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(" ".join(f"{n} {k.lower()}" for k, n in sorted(counts.items())))


if __name__ == "__main__":
    main()
