//! The enigma side of benches/memory_vs_faiss.py: builds the HNSW graph over vectors the script wrote, then
//! answers its commands on stdin, one a line, so the two engines' query rounds alternate:
//!
//! `ef N` runs every query at breadth N and prints `recall QPS` (recall@10 against the script's exact ids).
//!
//! Usage: ann_bench DATA.f32 QUERIES.f32 TRUTH.i64 DIM M EF_CONSTRUCTION (little-endian raw arrays).

use enigma_memory::hnsw::{Params, Visited};
use enigma_memory::index::{Method, VectorIndex};
use std::io::{BufRead, Write};
use std::time::Instant;

fn floats(path: &str) -> Result<Vec<f32>, String> {
    let b = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, queries, truth, dim, m, efc] = args.as_slice() else {
        return Err("usage: ann_bench DATA.f32 QUERIES.f32 TRUTH.i64 DIM M EF_CONSTRUCTION".into());
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    let dim = num(dim)?;
    let params = Params {
        m: num(m)?,
        ef_construction: num(efc)?,
        seed: 1,
    };
    let data = floats(data)?;
    let queries = floats(queries)?;
    let truth: Vec<i64> = std::fs::read(truth)
        .map_err(|e| e.to_string())?
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let mut index = VectorIndex::new("bench", dim).with_config(params, 0);
    for (i, v) in data.chunks_exact(dim).enumerate() {
        index.push(i as i64, v).map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    index.build_graph();
    println!("built {:.2}", t.elapsed().as_secs_f64());
    let queries: Vec<&[f32]> = queries.chunks_exact(dim).collect();
    let mut visited = Visited::default();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let Some(ef) = line.strip_prefix("ef ") else {
            break;
        };
        let ef = num(ef.trim())?;
        let t = Instant::now();
        let found: Vec<Vec<(u32, f32)>> = queries
            .iter()
            .map(|q| index.search_rows(q, 10, Method::Hnsw { ef }, &mut visited))
            .collect();
        let secs = t.elapsed().as_secs_f64();
        let mut hits = 0usize;
        for (f, want) in found.iter().zip(truth.chunks_exact(10)) {
            hits += f
                .iter()
                .filter(|(r, _)| want.contains(&(*r as i64)))
                .count();
        }
        let recall = hits as f64 / (10 * queries.len()) as f64;
        writeln!(out, "{recall} {}", queries.len() as f64 / secs).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}
