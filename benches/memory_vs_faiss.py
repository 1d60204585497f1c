"""The driver of benches/memory_vs_faiss.sh: same vectors, same settings, alternating query rounds."""

import statistics
import subprocess
import sys
import time

import faiss
import numpy as np

BIN, WORK, N, ROUNDS, M, EFC = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
DIM, QUERIES = 384, 200
EFS = [40, 80, 160, 320, 640, 1280, 2560, 5120]
faiss.omp_set_num_threads(1)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def datasets(rng):
    yield "uniform", unit(rng.standard_normal((N, DIM))), unit(rng.standard_normal((QUERIES, DIM)))
    centres = unit(rng.standard_normal((100, DIM)))
    def draw(n):
        return unit(centres[rng.integers(0, 100, n)] + 0.06 * rng.standard_normal((n, DIM)))
    yield "clustered", draw(N), draw(QUERIES)


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))


print(f"{N} vectors of {DIM}, {QUERIES} queries, top 10, HNSW M={M} efConstruction={EFC}, 1 thread each, "
      f"{ROUNDS} alternating rounds; faiss-cpu {faiss.__version__}")
rng = np.random.default_rng(17)
for name, data, queries in datasets(rng):
    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    _, truth = flat.search(queries, 10)
    data.tofile(f"{WORK}/data.f32")
    queries.tofile(f"{WORK}/queries.f32")
    truth.astype("<i8").tofile(f"{WORK}/truth.i64")
    ours = subprocess.Popen([BIN, f"{WORK}/data.f32", f"{WORK}/queries.f32", f"{WORK}/truth.i64",
                             str(DIM), str(M), str(EFC)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ours_build = float(ours.stdout.readline().split()[1])
    index = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EFC
    t = time.perf_counter()
    index.add(data)
    faiss_build = time.perf_counter() - t
    runs = {(e, ef): [] for e in ("enigma", "faiss") for ef in EFS}
    rec = {}
    for _ in range(ROUNDS):
        for ef in EFS:
            ours.stdin.write(f"ef {ef}\n")
            ours.stdin.flush()
            r, qps = map(float, ours.stdout.readline().split())
            rec[("enigma", ef)] = r
            runs[("enigma", ef)].append(qps)
            index.hnsw.efSearch = ef
            t = time.perf_counter()
            _, found = index.search(queries, 10)
            runs[("faiss", ef)].append(QUERIES / (time.perf_counter() - t))
            rec[("faiss", ef)] = recall(found, truth)
    ours.stdin.close()
    ours.wait()
    print(f"\n{name}: build enigma {ours_build:.1f} s, faiss {faiss_build:.1f} s")
    print(f"{'ef':>6} {'enigma recall':>14} {'enigma q/s':>11} {'faiss recall':>13} {'faiss q/s':>10}")
    for ef in EFS:
        print(f"{ef:>6} {rec[('enigma', ef)]:>14.3f} {statistics.median(runs[('enigma', ef)]):>11.0f} "
              f"{rec[('faiss', ef)]:>13.3f} {statistics.median(runs[('faiss', ef)]):>10.0f}")
    best = {}
    for e in ("enigma", "faiss"):
        ok = [ef for ef in EFS if rec[(e, ef)] >= 0.95]
        best[e] = (ok[0], statistics.median(runs[(e, ok[0])])) if ok else None
    if best["enigma"] and best["faiss"]:
        (ea, eq), (fa, fq) = best["enigma"], best["faiss"]
        print(f"at recall@10 >= 0.95: enigma {eq:.0f} q/s (ef={ea}), faiss {fq:.0f} q/s (ef={fa}): "
              f"ratio {eq / fq:.2f}x")
    else:
        print(f"recall@10 0.95 not reached by {[e for e in best if not best[e]]} within ef <= {EFS[-1]}")
