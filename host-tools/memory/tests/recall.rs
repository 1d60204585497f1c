//! Search quality of the HNSW graph: recall@10 against exact search on seeded random unit vectors.
//!
//! SPEC: 100,000 vectors of dimension 384, recall@10 ≥ 0.95. `ENIGMA_RECALL_N` sets the count (CI runs the
//! full 100,000; see `.ci/run`); the default, 20,000, keeps a plain `cargo test` short on a small machine.

use enigma_memory::hnsw::Visited;
use enigma_memory::index::{default_ef, Method, VectorIndex};
use enigma_testkit::XorShift;
use std::time::Instant;

const DIM: usize = 384;

/// A point uniform on the unit sphere: normal components (Box-Muller), normalised.
fn unit(rng: &mut XorShift) -> Vec<f32> {
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            let (u1, u2) = (1.0 - rng.unit_f64(), rng.unit_f64());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[test]
fn hnsw_recall_at_10_against_exact() {
    let n: usize = std::env::var("ENIGMA_RECALL_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let mut rng = XorShift::new(17);
    let mut index = VectorIndex::new("random", DIM);
    for i in 0..n {
        index.push(i as i64, &unit(&mut rng)).unwrap();
    }
    let t = Instant::now();
    index.build_graph();
    let build = t.elapsed().as_secs_f64();
    let queries: Vec<Vec<f32>> = (0..200).map(|_| unit(&mut rng)).collect();
    let mut visited = Visited::default();
    let (mut hits, mut total) = (0usize, 0usize);
    let t = Instant::now();
    let ef = default_ef(10);
    let mut approx = Vec::new();
    for q in &queries {
        approx.push(index.search_rows(q, 10, Method::Hnsw { ef }, &mut visited));
    }
    let hnsw_secs = t.elapsed().as_secs_f64();
    for (q, a) in queries.iter().zip(&approx) {
        let exact = index.search_rows(q, 10, Method::Exact, &mut visited);
        assert_eq!(exact.len(), 10);
        total += 10;
        hits += a.iter().filter(|x| exact.iter().any(|e| e.0 == x.0)).count();
    }
    let recall = hits as f64 / total as f64;
    eprintln!(
        "n={n} dim={DIM}: graph built in {build:.1} s, recall@10 {recall:.4} at ef={ef}, {:.0} queries/s",
        queries.len() as f64 / hnsw_secs
    );
    assert!(recall >= 0.95, "recall@10 {recall} < 0.95 on {n} vectors");
}
