#!/usr/bin/env bash
# Approximate search: queries/s at recall@10 >= 0.95 of enigma-memory's HNSW graph against faiss-cpu's
# IndexHNSWFlat (pip), on the same seeded vectors, the same graph settings (M, efConstruction) and one thread
# each. Not a test: numbers depend on the machine and its load.
#
#   bash benches/memory_vs_faiss.sh                 # needs `pip install faiss-cpu numpy`
#   N=100000 ROUNDS=5 bash benches/memory_vs_faiss.sh
#
# benches/memory_vs_faiss.py writes the vectors (uniform random unit vectors, and clustered ones around 100
# centres), computes the exact top 10 with faiss's IndexFlatIP, builds both graphs, then alternates query
# rounds between the engines at each search breadth (ef); each side's figure is the median q/s at the smallest
# ef whose recall reaches 0.95. Writes benches/results/memory_vs_faiss.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/results.sh
N="${N:-20000}"
ROUNDS="${ROUNDS:-3}"
M="${M:-16}"
EFC="${EFC:-80}"
cargo build --release -q -p enigma-memory --example ann_bench
BIN="${CARGO_TARGET_DIR:-target}/release/examples/ann_bench"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
results_begin memory_vs_faiss "Approximate search: enigma-memory's HNSW against faiss-cpu's" \
    "N=$N ROUNDS=$ROUNDS M=$M EFC=$EFC bash benches/memory_vs_faiss.sh"
python3 benches/memory_vs_faiss.py "$BIN" "$WORK" "$N" "$ROUNDS" "$M" "$EFC" | tee /dev/stderr | results_block
results_end
