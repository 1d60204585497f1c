//! Each kernel at real shapes, for every tier this CPU supports (tiers it lacks are listed as skipped).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use enigma_benches::{data, MATVEC_SHAPES};
use enigma_kernels::{
    bf16, f16, kernels_for, kquants::QK_K, quantize_bf16, quantize_f16, quantize_q4_0,
    quantize_q8_0, BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8_0, Gemm, Tier, WeightView, QK,
};

/// The tiers this CPU runs; the ones it lacks are reported once as skipped, never benched.
fn tiers() -> &'static [&'static enigma_kernels::Kernels] {
    static TIERS: std::sync::OnceLock<Vec<&'static enigma_kernels::Kernels>> =
        std::sync::OnceLock::new();
    TIERS.get_or_init(|| {
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
    })
}

/// Weight storage of one matrix in every dtype the kernels multiply.
struct Stored {
    f32: Vec<f32>,
    f16: Vec<f16>,
    bf16: Vec<bf16>,
    q8: Vec<BlockQ8_0>,
    q4: Vec<BlockQ4_0>,
    /// Random super-blocks with small scales (nothing here quantizes to k-quants): their speed does not
    /// depend on the values.
    q4k: Vec<BlockQ4K>,
    q6k: Vec<BlockQ6K>,
}

/// `n` super-blocks of `B` from pseudo-random bytes, with the f16 scales at `scales` set to 2^-8.
fn kblocks<B: bytemuck::Pod>(n: usize, scales: &[usize], seed: u64) -> Vec<B> {
    let size = std::mem::size_of::<B>();
    let mut rng = enigma_testkit::XorShift::new(seed);
    (0..n)
        .map(|_| {
            let mut b: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
            for &at in scales {
                b[at..at + 2].copy_from_slice(&f16::from_f32(1.0 / 256.0).to_bits().to_le_bytes());
            }
            bytemuck::pod_read_unaligned(&b)
        })
        .collect()
}

impl Stored {
    fn new(w: Vec<f32>) -> Self {
        let mut f16s = vec![f16::ZERO; w.len()];
        quantize_f16(&w, &mut f16s);
        let mut bf16s = vec![bf16::ZERO; w.len()];
        quantize_bf16(&w, &mut bf16s);
        let mut q8 = vec![BlockQ8_0::ZERO; w.len() / QK];
        quantize_q8_0(&w, &mut q8);
        let mut q4 = vec![BlockQ4_0::ZERO; w.len() / QK];
        quantize_q4_0(&w, &mut q4);
        let nk = w.len() / QK_K;
        Stored {
            f32: w,
            f16: f16s,
            bf16: bf16s,
            q8,
            q4,
            q4k: kblocks(nk, &[0, 2], 3),
            q6k: kblocks(nk, &[208], 4),
        }
    }

    /// Every dtype's view with the weight bytes it streams; the k-quants only where rows are whole
    /// super-blocks.
    fn views(&self, cols: usize) -> Vec<(WeightView<'_>, usize)> {
        let n = self.f32.len();
        let mut v = vec![
            (
                WeightView::F32 {
                    data: &self.f32,
                    cols,
                },
                n * 4,
            ),
            (
                WeightView::F16 {
                    data: &self.f16,
                    cols,
                },
                n * 2,
            ),
            (
                WeightView::BF16 {
                    data: &self.bf16,
                    cols,
                },
                n * 2,
            ),
            (
                WeightView::Q8_0 {
                    blocks: &self.q8,
                    cols,
                },
                n / QK * 34,
            ),
            (
                WeightView::Q4_0 {
                    blocks: &self.q4,
                    cols,
                },
                n / QK * 18,
            ),
        ];
        if cols.is_multiple_of(QK_K) {
            v.push((
                WeightView::Q4K {
                    blocks: &self.q4k,
                    cols,
                },
                n / QK_K * 144,
            ));
            v.push((
                WeightView::Q6K {
                    blocks: &self.q6k,
                    cols,
                },
                n / QK_K * 210,
            ));
        }
        v
    }
}

fn matvec(c: &mut Criterion) {
    for (n, d) in MATVEC_SHAPES {
        let stored = Stored::new(data(n * d, 1));
        let x = data(d, 2);
        let mut out = vec![0.0; n];
        for (w, bytes) in stored.views(d) {
            let mut g = c.benchmark_group(format!("matvec_{}/{n}x{d}", w.dtype().name()));
            // Weight bytes streamed per call: GB/s is the figure that decides decode speed. GFLOP/s is
            // 2 * n * d / time, i.e. the GB/s figure times 2 * n * d / bytes.
            g.throughput(Throughput::Bytes(bytes as u64));
            for &k in tiers() {
                g.bench_function(k.tier.name(), |b| {
                    b.iter(|| k.matvec(black_box(&mut out), w, &x))
                });
            }
            g.finish();
        }
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
        for &k in tiers() {
            g.bench_function(k.tier.name(), |b| {
                b.iter(|| (k.matmul_f32)(black_box(&mut out), &w, &x, t))
            });
        }
        g.finish();
    }
}

/// `gemm_f32` at training's shapes (nano: D 128, H 384, V 8000, 2048 rows, head size 32, T 256), plain and
/// with a transposed `A` (the weight gradients' `dYᵀ · X`). Elements = flops, so criterion reports GFLOP/s.
fn gemm(c: &mut Criterion) {
    let shapes = [
        ("classifier", 2048, 128, 8000, false),
        ("proj", 2048, 128, 128, false),
        ("ffn_down", 2048, 384, 128, false),
        ("dw_aT", 128, 2048, 384, true),
        ("attn", 256, 32, 256, false),
        // One 256-row chunk of the cross-entropy: logits, dX = dlogits · W, dW += dlogitsᵀ · X.
        ("ce_logits", 256, 128, 8000, false),
        ("ce_dx", 256, 8000, 128, false),
        ("ce_dw_aT", 8000, 256, 128, true),
    ];
    for (what, m, k, n, trans) in shapes {
        let a = data(m * k, 7);
        let b = data(k * n, 8);
        let mut out = vec![0.0; m * n];
        let shape = Gemm::new(m, k, n);
        let shape = if trans { shape.a_t(m) } else { shape };
        let mut g = c.benchmark_group(format!("gemm_f32/{what}/{m}x{k}x{n}"));
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        if m * n * k > 100_000_000 {
            g.sample_size(10);
        }
        for &kt in tiers() {
            g.bench_function(kt.tier.name(), |bch| {
                bch.iter(|| (kt.gemm_f32)(black_box(&mut out), &a, &b, shape))
            });
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
    for &k in tiers() {
        let name = k.tier.name();
        g.bench_function(format!("rmsnorm/{name}"), |b| {
            b.iter(|| (k.rmsnorm)(&mut out, &x, &wt, 1e-5))
        });
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
    for &k in tiers() {
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

criterion_group!(benches, matvec, matmul, gemm, elementwise, attention);
criterion_main!(benches);
