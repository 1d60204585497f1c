#!/usr/bin/env python3
"""Reference tensors for the trainer's golden test (host-tools/train/tests/train_golden_torch.rs).

A tiny Llama-family model written plainly in PyTorch, with the same definition as enigma's trainer and
inference core: RMSNorm (eps inside the square root), RoPE on adjacent pairs (llama2.c's layout),
grouped-query causal attention, SwiGLU, a classifier tied to the embedding, and cross-entropy averaged over
the targets whose mask is set. It dumps the parameters, one batch, the logits, the loss, every parameter's
gradient, and the losses of 10 AdamW steps (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only,
gradient clipping at 1.0, warmup + cosine schedule).

Everything is computed in float64 so the fixture is the exact function; the Rust test (f32) states its
tolerances.

Regenerate (CPU torch from PyPI is enough; CI never runs this):
    pip install torch
    python3 scripts/torch_reference.py host-tools/train/tests/fixtures/torch_tiny.bin

File format (little-endian): b"ENGMFIX1", u32 count, then per tensor: u32 name length, name (UTF-8),
u32 ndim, ndim x u32 dims, f32 data (row-major) -- int tensors are stored as f32 too (exact below 2^24).
"""
import math
import struct
import sys

import torch
import torch.nn.functional as F

torch.manual_seed(0)
DT = torch.float64

# The config (enigma_core::Config). The Rust test reads these back from the fixture.
DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 32, 48, 2, 4, 2, 37, 16
THETA, EPS = 10000.0, 1e-5
HS = DIM // HEADS
KVD = KV_HEADS * HS
B, T = 2, 12
STEPS, LR, MIN_LR, WARMUP = 10, 1e-2, 1e-3, 2
BETAS, ADAM_EPS, WD, CLIP = (0.9, 0.95), 1e-8, 0.1, 1.0

# Parameters in ParamLayout order; per-layer tensors stacked, torch.nn.Linear's (out, in) row layout.
shapes = [
    ("token_embedding", (VOCAB, DIM)),
    ("attn_norm", (LAYERS, DIM)),
    ("wq", (LAYERS, DIM, DIM)),
    ("wk", (LAYERS, KVD, DIM)),
    ("wv", (LAYERS, KVD, DIM)),
    ("wo", (LAYERS, DIM, DIM)),
    ("ffn_norm", (LAYERS, DIM)),
    ("w1", (LAYERS, HIDDEN, DIM)),
    ("w2", (LAYERS, DIM, HIDDEN)),
    ("w3", (LAYERS, HIDDEN, DIM)),
    ("final_norm", (DIM,)),
]
params = {}
for name, shape in shapes:
    if name.endswith("norm"):
        params[name] = (1.0 + 0.1 * torch.randn(shape, dtype=torch.float32)).to(DT)
    else:
        params[name] = (0.2 * torch.randn(shape, dtype=torch.float32)).to(DT)
    params[name].requires_grad_(True)

tokens = torch.randint(0, VOCAB, (B, T))
targets = torch.randint(0, VOCAB, (B, T))
# Some targets carry no loss, as the user turns of a conversation.
mask = torch.ones(B, T, dtype=torch.bool)
mask[0, :3] = False
mask[1, 5:8] = False


def rope_table():
    i = torch.arange(HS // 2, dtype=torch.float32)
    freq = 1.0 / torch.pow(torch.tensor(THETA, dtype=torch.float32), 2 * i / HS)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * freq[None, :]
    return torch.cos(ang).to(DT), torch.sin(ang).to(DT)  # (T, HS/2)


COS, SIN = rope_table()


def rope(x):  # x: (B, T, n, HS), pairs of adjacent elements rotate together
    x = x.view(*x.shape[:-1], HS // 2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    c, s = COS[None, :, None, :], SIN[None, :, None, :]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2)


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def forward(p):
    x = p["token_embedding"][tokens]  # (B, T, D)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(LAYERS):
        xn = rmsnorm(x, p["attn_norm"][l])
        q = rope((xn @ p["wq"][l].T).view(B, T, HEADS, HS)).transpose(1, 2)  # (B, NH, T, HS)
        k = rope((xn @ p["wk"][l].T).view(B, T, KV_HEADS, HS)).transpose(1, 2)
        v = (xn @ p["wv"][l].T).view(B, T, KV_HEADS, HS).transpose(1, 2)
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)  # query head h uses kv head h // group
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(HS)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, DIM)
        x = x + o @ p["wo"][l].T
        xn = rmsnorm(x, p["ffn_norm"][l])
        x = x + (F.silu(xn @ p["w1"][l].T) * (xn @ p["w3"][l].T)) @ p["w2"][l].T
    logits = rmsnorm(x, p["final_norm"]) @ p["token_embedding"].T  # tied classifier
    ce = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1), reduction="none")
    loss = (ce * mask.view(-1)).sum() / mask.sum()
    return logits, loss


def lr_at(step):  # trainer/adamw.rs Schedule::lr
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min((step - WARMUP) / max(STEPS - WARMUP, 1), 1.0)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * progress)) * (LR - MIN_LR)


out = {}
for name, _ in shapes:
    out["param." + name] = params[name].detach().clone()
out["config"] = torch.tensor([DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ, B, T, STEPS, WARMUP])
out["hyper"] = torch.tensor([THETA, EPS, LR, MIN_LR, BETAS[0], BETAS[1], ADAM_EPS, WD, CLIP])
out["tokens"], out["targets"], out["mask"] = tokens, targets, mask.to(torch.int64)

logits, loss = forward(params)
loss.backward()
out["logits"] = logits.detach()
out["loss"] = loss.detach().reshape(1)
for name, _ in shapes:
    out["grad." + name] = params[name].grad.detach().clone()

# 10 AdamW steps from the same start, on the same batch.
for p in params.values():
    p.grad = None
decay = [params[n] for n, _ in shapes if not n.endswith("norm")]
no_decay = [params[n] for n, _ in shapes if n.endswith("norm")]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
    lr=LR, betas=BETAS, eps=ADAM_EPS,
)
losses = []
for step in range(STEPS):
    for g in opt.param_groups:
        g["lr"] = lr_at(step)
    opt.zero_grad()
    _, loss = forward(params)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP)
    opt.step()
    losses.append(loss.item())
out["adamw_losses"] = torch.tensor(losses)
_, final = forward(params)
out["adamw_final_loss"] = final.detach().reshape(1)

path = sys.argv[1] if len(sys.argv) > 1 else "host-tools/train/tests/fixtures/torch_tiny.bin"
with open(path, "wb") as f:
    f.write(b"ENGMFIX1")
    f.write(struct.pack("<I", len(out)))
    for name, t in out.items():
        t = t.detach().to(torch.float32).contiguous()
        nb = name.encode()
        f.write(struct.pack("<I", len(nb)) + nb)
        f.write(struct.pack("<I", t.dim()) + struct.pack(f"<{t.dim()}I", *t.shape))
        f.write(t.numpy().astype("<f4").tobytes())
print(f"wrote {path}: loss {out['loss'].item():.6f}, AdamW losses {[round(x, 5) for x in losses]}")
