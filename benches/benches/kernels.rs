//! Each kernel at real shapes, for every tier this CPU supports (tiers it lacks are listed as skipped).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use enigma_benches::{data, MATVEC_SHAPES};
use enigma_kernels::{kernels_for, Tier};

fn tiers() -> Vec<&'static enigma_kernels::Kernels> {
    Tier::ALL
        .into_iter()
        .filter_map(|t| match kernels_for(t) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("SKIPPED tier {}: {e}", t.name());
                None
            }
        })
        .collect()
}

fn matvec(c: &mut Criterion) {
    for (n, d) in MATVEC_SHAPES {
        let w = data(n * d, 1);
        let x = data(d, 2);
        let mut out = vec![0.0; n];
        let mut g = c.benchmark_group(format!("matvec_f32/{n}x{d}"));
        // Weight bytes streamed per call: GB/s is the figure that matters for decode (2 flops per 4 bytes).
        g.throughput(Throughput::Bytes((n * d * 4) as u64));
        for k in tiers() {
            g.bench_function(k.tier.name(), |b| b.iter(|| (k.matvec_f32)(black_box(&mut out), &w, &x)));
        }
        g.finish();
    }
}

fn matmul(c: &mut Criterion) {
    let t = 32;
    for (n, d) in [(288, 288), (2048, 768)] {
        let w = data(n * d, 1);
        let x = data(t * d, 2);
        let mut out = vec![0.0; t * n];
        let mut g = c.benchmark_group(format!("matmul_f32/{t}x{n}x{d}"));
        // Elements = flops: GFLOP/s for prefill.
        g.throughput(Throughput::Elements((2 * t * n * d) as u64));
        for k in tiers() {
            g.bench_function(k.tier.name(), |b| b.iter(|| (k.matmul_f32)(black_box(&mut out), &w, &x, t)));
        }
        g.finish();
    }
}

fn elementwise(c: &mut Criterion) {
    let n = 4096;
    let x = data(n, 3);
    let wt = data(n, 4);
    let mut out = vec![0.0; n];
    let mut g = c.benchmark_group("elementwise/4096");
    g.throughput(Throughput::Elements(n as u64));
    for k in tiers() {
        let name = k.tier.name();
        g.bench_function(format!("rmsnorm/{name}"), |b| b.iter(|| (k.rmsnorm)(&mut out, &x, &wt, 1e-5)));
        g.bench_function(format!("softmax/{name}"), |b| {
            b.iter(|| {
                out.copy_from_slice(&x);
                (k.softmax)(&mut out)
            })
        });
        g.bench_function(format!("silu_mul/{name}"), |b| {
            b.iter(|| {
                out.copy_from_slice(&x);
                (k.silu_mul)(&mut out, &wt)
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    // One head of the 110M shape (head size 64) over a 512-token context.
    let (t, hs) = (512, 64);
    let q = data(hs, 5);
    let keys = data(t * hs, 6);
    let mut scores = vec![0.0; t];
    let mut out = vec![0.0; hs];
    let mut g = c.benchmark_group(format!("attention/{t}x{hs}"));
    g.throughput(Throughput::Bytes((2 * t * hs * 4) as u64));
    for k in tiers() {
        g.bench_function(k.tier.name(), |b| {
            b.iter(|| {
                (k.attn_scores)(&mut scores, &q, &keys, 0.125);
                (k.softmax)(&mut scores);
                (k.attn_accum)(&mut out, &scores, &keys);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, matvec, matmul, elementwise, attention);
criterion_main!(benches);
