//! Batched quantized products at the 110M shape (dim 768, hidden 2048): 1, 8 and 32 rows (tokens) through
//! the packed int8 GEMM and through the row-major path, best tier. Throughput is in rows, so criterion's
//! `elem/s` compares rows directly; `benches/qgemm_rows.sh` turns the estimates into time per row against
//! the 1-row product.
//!
//! Each call takes the next of enough copies of the matrix to fill [`STREAM_BYTES`], so the weights come
//! from DRAM as in a decode of the whole model (one matrix hot in cache would flatter the 1-row product).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use enigma_benches::data;
use enigma_kernels::qgemm::{pack_q4_0, pack_q8_0, PackedFormat};
use enigma_kernels::{
    kernels, quantize_q4_0, quantize_q8_0, BlockQ4_0, BlockQ8_0, DType, WeightView, QK,
};
use std::time::Duration;

/// `(name, n, d)`: wq/wk/wv/wo, w1/w3, w2 of the 110M shape.
const SHAPES: [(&str, usize, usize); 3] = [
    ("attn", 768, 768),
    ("ffn_up", 2048, 768),
    ("ffn_down", 768, 2048),
];
const ROWS: [usize; 3] = [1, 8, 32];
/// Twice a 32 MiB last-level cache.
const STREAM_BYTES: usize = 64 << 20;

/// Copies of `m` adding up to at least [`STREAM_BYTES`].
fn copies<T: Clone>(m: Vec<T>) -> Vec<Vec<T>> {
    let n = STREAM_BYTES.div_ceil(std::mem::size_of_val(&m[..]).max(1));
    vec![m; n]
}

fn packed(f: DType, p: &[Vec<u8>], n: usize, d: usize) -> Vec<WeightView<'_>> {
    p.iter()
        .map(|p| WeightView::packed(f, p, n, d).expect("view"))
        .collect()
}

fn qgemm(c: &mut Criterion) {
    let k = kernels();
    for (what, n, d) in SHAPES {
        let w = data(n * d, 11);
        let mut q8 = vec![BlockQ8_0::ZERO; n * d / QK];
        quantize_q8_0(&w, &mut q8);
        let mut q4 = vec![BlockQ4_0::ZERO; n * d / QK];
        quantize_q4_0(&w, &mut q4);
        let mut p8 = vec![0u8; PackedFormat::Q8_0.packed_len(n, d).expect("size")];
        pack_q8_0(&q8, n, d, &mut p8);
        let mut p4 = vec![0u8; PackedFormat::Q4_0.packed_len(n, d).expect("size")];
        pack_q4_0(&q4, n, d, &mut p4);
        let (p8, q8, p4, q4) = (copies(p8), copies(q8), copies(p4), copies(q4));
        let views = [
            ("q8_0", "packed", packed(DType::Q8_0, &p8, n, d)),
            (
                "q8_0",
                "rowmajor",
                q8.iter().map(|q| WeightView::q8_0(q, d)).collect(),
            ),
            ("q4_0", "packed", packed(DType::Q4_0, &p4, n, d)),
            (
                "q4_0",
                "rowmajor",
                q4.iter().map(|q| WeightView::q4_0(q, d)).collect(),
            ),
        ];
        for (dtype, layout, views) in views {
            let mut g = c.benchmark_group(format!("qgemm_{dtype}/{what}_{n}x{d}/{layout}"));
            g.sample_size(20)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            for t in ROWS {
                let x = data(t * d, 12);
                let mut out = vec![0.0; t * n];
                g.throughput(Throughput::Elements(t as u64));
                let mut next = views.iter().cycle();
                g.bench_function(format!("{}/{t}", k.variant), |b| {
                    b.iter(|| {
                        let view = *next.next().expect("copies");
                        k.matmul(black_box(&mut out), view, &x, t)
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, qgemm);
criterion_main!(benches);
