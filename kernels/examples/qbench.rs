//! Quick matvec timing per tier and dtype on a matrix set larger than the last-level cache: the minimum over
//! many short trials, interleaved across tiers, so a noisy machine (other jobs) perturbs every tier alike.
//!
//!     cargo run --release -p enigma-kernels --features std --example qbench [rows] [cols]

use enigma_kernels::{
    kernels_for, quantize_q4_0, quantize_q8_0, BlockQ4_0, BlockQ8_0, Tier, WeightView, QK,
};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, d) = (
        args.first().copied().unwrap_or(2048),
        args.get(1).copied().unwrap_or(768),
    );
    let mats = (64 << 20) / (n * d) + 1; // about 256 MB of f32, 64 MB of q8_0
    let mut seed = 1u32;
    let mut rnd = || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
    };
    let w: Vec<f32> = (0..mats * n * d).map(|_| rnd()).collect();
    let x: Vec<f32> = (0..d).map(|_| rnd()).collect();
    let mut q8 = vec![BlockQ8_0::ZERO; w.len() / QK];
    quantize_q8_0(&w, &mut q8);
    let mut q4 = vec![BlockQ4_0::ZERO; w.len() / QK];
    quantize_q4_0(&w, &mut q4);
    let tiers: Vec<_> = [Tier::Avx2, Tier::Avx512]
        .into_iter()
        .filter_map(|t| kernels_for(t).ok())
        .collect();
    let mut out = vec![0.0f32; n];
    for (name, bytes) in [("f32", 4.0), ("q8_0", 34.0 / 32.0), ("q4_0", 18.0 / 32.0)] {
        let mut best = vec![f64::MAX; tiers.len()];
        for _ in 0..15 {
            for (b, k) in best.iter_mut().zip(&tiers) {
                let t = Instant::now();
                for m in 0..mats {
                    let r = m * n * d..(m + 1) * n * d;
                    let v = match name {
                        "f32" => WeightView::f32(&w[r], d),
                        "q8_0" => WeightView::q8_0(&q8[r.start / QK..r.end / QK], d),
                        _ => WeightView::q4_0(&q4[r.start / QK..r.end / QK], d),
                    };
                    k.matvec(&mut out, v, &x);
                }
                *b = b.min(t.elapsed().as_secs_f64());
            }
        }
        for (b, k) in best.iter().zip(&tiers) {
            let gbs = mats as f64 * (n * d) as f64 * bytes / b / 1e9;
            println!("{name:>5} {n}x{d} {:>14}: {:6.2} GB/s", k.variant, gbs);
        }
    }
}
