#!/usr/bin/env python3
"""PyTorch CPU training throughput of the same model enigma trains (see benches/train_vs_torch.sh).

The model is written the idiomatic fast way for PyTorch: fused scaled_dot_product_attention (causal, GQA by
repeating key/value heads), F.silu, F.cross_entropy; float32; AdamW(fused=False) with clipping at 1.0.
Prints one line: `torch <preset> <tokens/s>` (the median over timed steps, after warmup steps).
"""
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

PRESETS = {"nano": (128, 4, 4, 2, 384), "micro": (192, 4, 4, 2, 512)}


def main():
    preset, threads, b, t, vocab, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d, layers, heads, kv, hidden = PRESETS[preset]
    hs = d // heads
    p = {
        "emb": torch.randn(vocab, d) * 0.02,
        "final": torch.ones(d),
    }
    for l in range(layers):
        p[f"an{l}"] = torch.ones(d)
        p[f"fn{l}"] = torch.ones(d)
        p[f"wq{l}"] = torch.randn(d, d) * 0.02
        p[f"wk{l}"] = torch.randn(kv * hs, d) * 0.02
        p[f"wv{l}"] = torch.randn(kv * hs, d) * 0.02
        p[f"wo{l}"] = torch.randn(d, d) * 0.02
        p[f"w1{l}"] = torch.randn(hidden, d) * 0.02
        p[f"w2{l}"] = torch.randn(d, hidden) * 0.02
        p[f"w3{l}"] = torch.randn(hidden, d) * 0.02
    for v in p.values():
        v.requires_grad_(True)
    i = torch.arange(hs // 2, dtype=torch.float32)
    ang = torch.arange(t, dtype=torch.float32)[:, None] / torch.pow(10000.0, 2 * i / hs)[None, :]
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]

    def rope(x):
        x = x.view(*x.shape[:-1], hs // 2, 2)
        x0, x1 = x[..., 0], x[..., 1]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def loss_fn(tokens, targets):
        x = p["emb"][tokens]
        for l in range(layers):
            xn = rms(x, p[f"an{l}"])
            q = rope((xn @ p[f"wq{l}"].T).view(b, t, heads, hs)).transpose(1, 2)
            k = rope((xn @ p[f"wk{l}"].T).view(b, t, kv, hs)).transpose(1, 2)
            v = (xn @ p[f"wv{l}"].T).view(b, t, kv, hs).transpose(1, 2)
            k = k.repeat_interleave(heads // kv, 1)
            v = v.repeat_interleave(heads // kv, 1)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + o.transpose(1, 2).reshape(b, t, d) @ p[f"wo{l}"].T
            xn = rms(x, p[f"fn{l}"])
            x = x + (F.silu(xn @ p[f"w1{l}"].T) * (xn @ p[f"w3{l}"].T)) @ p[f"w2{l}"].T
        logits = rms(x, p["final"]) @ p["emb"].T
        return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    decay = [v for k, v in p.items() if k.startswith("w") or k == "emb"]
    rest = [v for k, v in p.items() if not (k.startswith("w") or k == "emb")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95))
    times = []
    for s in range(steps):
        tokens = torch.randint(0, vocab, (b, t))
        targets = torch.randint(0, vocab, (b, t))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    timed = times[2:] if len(times) > 4 else times
    print(f"torch {preset} {b * t / statistics.median(timed):.0f}")


if __name__ == "__main__":
    main()
