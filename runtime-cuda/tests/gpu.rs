//! Tests that need an NVIDIA GPU (compute capability 8.0 or newer) and the CUDA driver and NVRTC. Without one
//! they print a SKIPPED line and pass, also under CI (which has no GPU); with ENIGMA_REQUIRE_GPU=1 they fail
//! instead. docs/DESIGN.md ("CUDA backend") gives the command that builds this binary here and runs it on a
//! GPU machine.
//!
//! Each kernel is compared with its CPU scalar reference on seeded random inputs at real shapes (every weight
//! type, batch 1, 4 and 8, and a prefill chunk through the GEMM), then the device forward pass with the CPU's:
//! greedy generation of stories260K (../shared) and of a random-weight `small` preset in every weight type.

use enigma_core::config::{Config, KvType, ParamLayout, Preset};
use enigma_core::kernels::{
    bf16, f16, generic, kernels, quantize_bf16, quantize_f16, quantize_q4_0, quantize_q8_0,
    BlockQ4_0, BlockQ8_0, WeightView, QK,
};
use enigma_core::{EnigmaFile, KvCache, Scratch, Serial, Transformer, Weights};
use enigma_cuda::ops::{self, Buf, DeviceMatrix, KvShape, QuantScratch, Rows};
use enigma_cuda::{DeviceModel, Gpu};
use enigma_testkit::XorShift;
use std::io::Write;

/// The GPU, or `None` after a SKIPPED line (a failure with ENIGMA_REQUIRE_GPU=1).
fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var_os("ENIGMA_REQUIRE_GPU").is_some_and(|v| v == "1") {
                panic!("{test}: {e} (ENIGMA_REQUIRE_GPU=1)");
            }
            let _ = writeln!(
                std::io::stderr().lock(),
                "!!!!!!!! SKIPPED {test}: no usable GPU ({e}) (set ENIGMA_REQUIRE_GPU=1 to make this a failure) !!!!!!!!"
            );
            None
        }
    }
}

/// Owned weights of one matrix in one type, and its view.
enum Owned {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    Q8(Vec<BlockQ8_0>),
    Q4(Vec<BlockQ4_0>),
}

const DTYPES: [&str; 5] = ["f32", "f16", "bf16", "q8_0", "q4_0"];

impl Owned {
    fn of(dtype: &str, w: &[f32]) -> Owned {
        match dtype {
            "f32" => Owned::F32(w.to_vec()),
            "f16" => {
                let mut o = vec![f16::ZERO; w.len()];
                quantize_f16(w, &mut o);
                Owned::F16(o)
            }
            "bf16" => {
                let mut o = vec![bf16::ZERO; w.len()];
                quantize_bf16(w, &mut o);
                Owned::BF16(o)
            }
            "q8_0" => {
                let mut o = vec![BlockQ8_0::ZERO; w.len() / QK];
                quantize_q8_0(w, &mut o);
                Owned::Q8(o)
            }
            _ => {
                let mut o = vec![BlockQ4_0::ZERO; w.len() / QK];
                quantize_q4_0(w, &mut o);
                Owned::Q4(o)
            }
        }
    }

    fn view(&self, cols: usize) -> WeightView<'_> {
        match self {
            Owned::F32(d) => WeightView::f32(d, cols),
            Owned::F16(d) => WeightView::f16(d, cols),
            Owned::BF16(d) => WeightView::bf16(d, cols),
            Owned::Q8(d) => WeightView::q8_0(d, cols),
            Owned::Q4(d) => WeightView::q4_0(d, cols),
        }
    }
}

/// `|got - want| <= atol + rtol * scale` for each element, where `scale` is the element's `Σ|w·x|` (so a
/// product's rounding is judged against the size of its terms, not of a sum that cancelled).
fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * s,
            "{what}: element {i}: device {g}, CPU {w} (scale {s})"
        );
    }
}

/// Every matvec and GEMM against the CPU's product of the same weights: (N, D) of real presets (stories15M's
/// 288, `medium`'s 768 × 2048 and back) and an odd one (stories260K's hidden 172, not a multiple of 8).
#[test]
fn products_match_the_cpu_for_every_dtype_and_batch() {
    let Some(g) = gpu("products_match_the_cpu_for_every_dtype_and_batch") else {
        return;
    };
    let mut rng = XorShift::new(7);
    for (n, d) in [(288, 288), (2048, 768), (768, 2048), (64, 172)] {
        let w = rng.fill(n * d, -0.5, 0.5);
        for dtype in DTYPES {
            if dtype.starts_with('q') && d % QK != 0 {
                continue;
            }
            let owned = Owned::of(dtype, &w);
            let view = owned.view(d);
            let m = DeviceMatrix::upload(&g, view).unwrap();
            for t in [1usize, 4, 8, 33, 100] {
                let x = rng.fill(t * d, -1.0, 1.0);
                // The reference: the CPU product of the same stored weights, row by row; generic::matvec_q*
                // quantizes x as the device does.
                let mut want = vec![0.0f32; t * n];
                let mut scale = vec![0.0f32; t * n];
                let mut row = vec![0.0f32; d];
                for r in 0..n {
                    view.row_to_f32(r, &mut row);
                    for b in 0..t {
                        scale[b * n + r] = row
                            .iter()
                            .zip(&x[b * d..(b + 1) * d])
                            .map(|(a, c)| (a * c).abs())
                            .sum();
                    }
                }
                for b in 0..t {
                    let (o, xb) = (&mut want[b * n..(b + 1) * n], &x[b * d..(b + 1) * d]);
                    match &owned {
                        Owned::F32(v) => generic::matvec_f32(o, v, xb),
                        Owned::F16(v) => generic::matvec_f16(o, v, xb),
                        Owned::BF16(v) => generic::matvec_bf16(o, v, xb),
                        Owned::Q8(v) => generic::matvec_q8_0(o, v, xb),
                        Owned::Q4(v) => generic::matvec_q4_0(o, v, xb),
                    }
                }
                let xd = Buf::upload(&g, &x).unwrap();
                let out = Buf::<f32>::zeros(&g, t * n).unwrap();
                let q = QuantScratch::new(&g, t.max(8) * d).unwrap();
                ops::linear(&g, out.at(0), &m, 0, n, xd.at(0), t, false, &q).unwrap();
                let got = out.read(&g, t * n).unwrap();
                // The f16/bf16 GEMM (t > 8) rounds activations to f16/bf16 for the tensor cores; the matvecs
                // keep them f32, and every quantized path quantizes them exactly as the CPU does.
                let gemm = t > 8 && matches!(dtype, "f16" | "bf16");
                let rtol = match (gemm, dtype) {
                    (false, _) => 1e-5,
                    (true, "bf16") => 1e-2,
                    (true, _) => 2e-3,
                };
                assert_close(
                    &format!("{dtype} ({n}, {d}) x {t}"),
                    &got,
                    &want,
                    &scale,
                    1e-4,
                    rtol,
                );
                // accumulate adds into what is there.
                ops::linear(&g, out.at(0), &m, 0, n, xd.at(0), t, true, &q).unwrap();
                let twice = out.read(&g, t * n).unwrap();
                let doubled: Vec<f32> = got.iter().map(|v| 2.0 * v).collect();
                assert_close(
                    &format!("{dtype} accumulate x {t}"),
                    &twice,
                    &doubled,
                    &scale,
                    1e-4,
                    1e-5,
                );
            }
        }
    }
}

/// The SwiGLU layer (`silu(x·w1ᵀ) * (x·w3ᵀ)`): fused for 1..8 rows, two GEMMs and `silu_mul` for a chunk, at
/// `medium`'s (2048, 768) in every type, against the CPU's two products and `silu_mul`.
#[test]
fn fused_swiglu_matches_the_cpu() {
    let Some(g) = gpu("fused_swiglu_matches_the_cpu") else {
        return;
    };
    let mut rng = XorShift::new(9);
    let (n, d) = (2048, 768);
    let (w1, w3) = (rng.fill(n * d, -0.5, 0.5), rng.fill(n * d, -0.5, 0.5));
    for dtype in DTYPES {
        let (o1, o3) = (Owned::of(dtype, &w1), Owned::of(dtype, &w3));
        let (v1, v3) = (o1.view(d), o3.view(d));
        let m1 = DeviceMatrix::upload(&g, v1).unwrap();
        let m3 = DeviceMatrix::upload(&g, v3).unwrap();
        for t in [1usize, 4, 8, 33] {
            let x = rng.fill(t * d, -1.0, 1.0);
            let (mut gate, mut up) = (vec![0.0f32; t * n], vec![0.0f32; t * n]);
            for b in 0..t {
                let xb = &x[b * d..(b + 1) * d];
                for (v, o) in [(v1, &mut gate), (v3, &mut up)] {
                    let o = &mut o[b * n..(b + 1) * n];
                    match v {
                        WeightView::F32 { data, .. } => generic::matvec_f32(o, data, xb),
                        WeightView::F16 { data, .. } => generic::matvec_f16(o, data, xb),
                        WeightView::BF16 { data, .. } => generic::matvec_bf16(o, data, xb),
                        WeightView::Q8_0 { blocks, .. } => generic::matvec_q8_0(o, blocks, xb),
                        WeightView::Q4_0 { blocks, .. } => generic::matvec_q4_0(o, blocks, xb),
                        _ => unreachable!(),
                    }
                }
            }
            // The gate's size bounds how far rounding in it moves the output.
            let scale: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(a, b)| (a.abs() + 1.0) * (b.abs() + 1.0))
                .collect();
            generic::silu_mul(&mut gate, &up);
            let xd = Buf::upload(&g, &x).unwrap();
            let (out, tmp) = (
                Buf::<f32>::zeros(&g, t * n).unwrap(),
                Buf::<f32>::zeros(&g, t * n).unwrap(),
            );
            let q = QuantScratch::new(&g, t.max(8) * d).unwrap();
            ops::swiglu(&g, out.at(0), tmp.at(0), (&m1, &m3), 0, n, xd.at(0), t, &q).unwrap();
            let rtol = match (t > 8, dtype) {
                (true, "bf16") => 1e-2,
                (true, "f16") => 2e-3,
                _ => 1e-4,
            };
            assert_close(
                &format!("swiglu {dtype} x {t}"),
                &out.read(&g, t * n).unwrap(),
                &gate,
                &scale,
                1e-4,
                rtol,
            );
        }
    }
}

#[test]
fn norms_rope_swiglu_and_embedding_match_the_cpu() {
    let Some(g) = gpu("norms_rope_swiglu_and_embedding_match_the_cpu") else {
        return;
    };
    let mut rng = XorShift::new(11);
    let (rows, d) = (8, 768);
    let x = rng.fill(rows * d, -2.0, 2.0);
    let w = rng.fill(d, 0.5, 1.5);
    let (xd, wd, out) = (
        Buf::upload(&g, &x).unwrap(),
        Buf::upload(&g, &w).unwrap(),
        Buf::<f32>::zeros(&g, rows * d).unwrap(),
    );
    ops::rmsnorm(&g, out.at(0), xd.at(0), wd.at(0), rows, d, 1e-5).unwrap();
    let got = out.read(&g, rows * d).unwrap();
    let mut want = vec![0.0; rows * d];
    for r in 0..rows {
        generic::rmsnorm(
            &mut want[r * d..(r + 1) * d],
            &x[r * d..(r + 1) * d],
            &w,
            1e-5,
        );
    }
    assert_close("rmsnorm", &got, &want, &want, 1e-5, 1e-5);

    // RoPE at positions up to 4000: the angles are large, so cos/sin precision shows.
    let (nh, nkv, hs) = (12, 4, 64);
    let pos: Vec<i32> = (0..rows as i32).map(|i| i * 517).collect();
    let q = rng.fill(rows * nh * hs, -1.0, 1.0);
    let k = rng.fill(rows * nkv * hs, -1.0, 1.0);
    let (qd, kd, pd) = (
        Buf::upload(&g, &q).unwrap(),
        Buf::upload(&g, &k).unwrap(),
        Buf::upload(&g, &pos).unwrap(),
    );
    ops::rope(&g, qd.at(0), kd.at(0), pd.at(0), rows, nh, nkv, hs, 10000.0).unwrap();
    let (mut qw, mut kw) = (q.clone(), k.clone());
    let mut cs = vec![0.0; hs];
    for r in 0..rows {
        generic::rope_table(&mut cs, hs, pos[r] as usize, 10000.0);
        generic::rope(&mut qw[r * nh * hs..(r + 1) * nh * hs], &cs);
        generic::rope(&mut kw[r * nkv * hs..(r + 1) * nkv * hs], &cs);
    }
    let ones = vec![1.0; qw.len()];
    assert_close(
        "rope q",
        &qd.read(&g, q.len()).unwrap(),
        &qw,
        &ones,
        1e-4,
        1e-4,
    );
    assert_close(
        "rope k",
        &kd.read(&g, k.len()).unwrap(),
        &kw,
        &ones[..kw.len()],
        1e-4,
        1e-4,
    );

    let a = rng.fill(rows * 2048, -6.0, 6.0);
    let b = rng.fill(rows * 2048, -1.0, 1.0);
    let (ad, bd) = (Buf::upload(&g, &a).unwrap(), Buf::upload(&g, &b).unwrap());
    ops::silu_mul(&g, ad.at(0), bd.at(0), a.len()).unwrap();
    let mut want = a.clone();
    generic::silu_mul(&mut want, &b);
    assert_close(
        "silu_mul",
        &ad.read(&g, a.len()).unwrap(),
        &want,
        &want,
        1e-6,
        1e-5,
    );

    let (v, d) = (1000, 512);
    let table = rng.fill(v * d, -1.0, 1.0);
    let tokens: Vec<i32> = vec![0, 999, 17, 500, 3, 3, 998, 1];
    let td = Buf::upload(&g, &tokens).unwrap();
    for dtype in DTYPES {
        let owned = Owned::of(dtype, &table);
        let view = owned.view(d);
        let m = DeviceMatrix::upload(&g, view).unwrap();
        let out = Buf::<f32>::zeros(&g, tokens.len() * d).unwrap();
        ops::embed(&g, out.at(0), &m, td.at(0), tokens.len()).unwrap();
        let mut want = vec![0.0; tokens.len() * d];
        for (i, &t) in tokens.iter().enumerate() {
            view.row_to_f32(t as usize, &mut want[i * d..(i + 1) * d]);
        }
        // A lookup is a widening: exact.
        assert_eq!(out.read(&g, want.len()).unwrap(), want, "embed {dtype}");
    }
}

/// Attention of 1, 4 and 8 rows over a paged cache (blocks of 16 positions, tables out of order), f32 and f16,
/// against the CPU's scores → softmax → weighted values, with GQA (12 query heads over 4 KV heads).
#[test]
fn attention_matches_the_cpu() {
    let Some(g) = gpu("attention_matches_the_cpu") else {
        return;
    };
    let mut rng = XorShift::new(5);
    let (nh, nkv, hs, layers, block, blocks) = (12, 4, 64, 2, 16, 64);
    for f16 in [false, true] {
        let shape = KvShape {
            layers,
            kv_heads: nkv,
            head_size: hs,
            block,
            blocks,
            f16,
        };
        let esize = if f16 { 2 } else { 4 };
        let kc = Buf::<u8>::zeros(&g, shape.elems() * esize).unwrap();
        let vc = Buf::<u8>::zeros(&g, shape.elems() * esize).unwrap();
        // Host copies of every stored key and value, per (position, kv head), as the cache rounds them.
        let ctx = 200;
        let keys = rng.fill(ctx * nkv * hs, -1.0, 1.0);
        let vals = rng.fill(ctx * nkv * hs, -1.0, 1.0);
        let round = |v: &[f32]| -> Vec<f32> {
            if f16 {
                v.iter().map(|x| f16::from_f32(*x).to_f32()).collect()
            } else {
                v.to_vec()
            }
        };
        let (kr, vr) = (round(&keys), round(&vals));
        let table: Vec<i32> = (0..ctx.div_ceil(block) as i32)
            .map(|i| (i * 7 + 3) % blocks as i32)
            .collect();
        let tb = table.len();
        let layer = 1;
        // Store every position, 8 rows a step.
        for p0 in (0..ctx).step_by(8) {
            let rows = 8.min(ctx - p0);
            let pos: Vec<i32> = (p0..p0 + rows).map(|p| p as i32).collect();
            let tables: Vec<i32> = (0..rows).flat_map(|_| table.clone()).collect();
            let (pd, td) = (
                Buf::upload(&g, &pos).unwrap(),
                Buf::upload(&g, &tables).unwrap(),
            );
            let kd = Buf::upload(&g, &keys[p0 * nkv * hs..(p0 + rows) * nkv * hs]).unwrap();
            let vd = Buf::upload(&g, &vals[p0 * nkv * hs..(p0 + rows) * nkv * hs]).unwrap();
            let r = Rows {
                rows,
                pos: pd.at(0),
                tables: td.at(0),
                tb,
            };
            ops::kv_store(&g, kc.at(0), vc.at(0), kd.at(0), vd.at(0), r, layer, shape).unwrap();
        }
        // 1, 4 and 8 decode rows at scattered positions; then a prompt chunk of 40 consecutive positions
        // through the tiled prefill kernel (not a multiple of its 16 rows, crossing blocks of the table).
        for rows in [1usize, 4, 8, 40] {
            let pos: Vec<i32> = if rows > 8 {
                (0..rows).map(|i| (150 + i) as i32).collect()
            } else {
                (0..rows).map(|i| (ctx - 1 - i * 23) as i32).collect()
            };
            let tables: Vec<i32> = (0..rows).flat_map(|_| table.clone()).collect();
            let q = rng.fill(rows * nh * hs, -1.0, 1.0);
            let (pd, td, qd) = (
                Buf::upload(&g, &pos).unwrap(),
                Buf::upload(&g, &tables).unwrap(),
                Buf::upload(&g, &q).unwrap(),
            );
            let out = Buf::<f32>::zeros(&g, rows * nh * hs).unwrap();
            let r = Rows {
                rows,
                pos: pd.at(0),
                tables: td.at(0),
                tb,
            };
            let scale = 1.0 / (hs as f32).sqrt();
            let attend = if rows > 8 {
                ops::attention_prefill
            } else {
                ops::attention
            };
            attend(
                &g,
                out.at(0),
                qd.at(0),
                kc.at(0),
                vc.at(0),
                r,
                layer,
                nh,
                shape,
                scale,
            )
            .unwrap();
            let got = out.read(&g, rows * nh * hs).unwrap();
            let mut want = vec![0.0; rows * nh * hs];
            for b in 0..rows {
                let n = pos[b] as usize + 1;
                for h in 0..nh {
                    let kh = h / (nh / nkv);
                    let qh = &q[(b * nh + h) * hs..(b * nh + h + 1) * hs];
                    let kk: Vec<f32> = (0..n)
                        .flat_map(|p| kr[(p * nkv + kh) * hs..(p * nkv + kh + 1) * hs].to_vec())
                        .collect();
                    let vv: Vec<f32> = (0..n)
                        .flat_map(|p| vr[(p * nkv + kh) * hs..(p * nkv + kh + 1) * hs].to_vec())
                        .collect();
                    let mut s = vec![0.0; n];
                    generic::attn_scores(&mut s, qh, &kk, scale);
                    generic::softmax(&mut s);
                    generic::attn_accum(
                        &mut want[(b * nh + h) * hs..(b * nh + h + 1) * hs],
                        &s,
                        &vv,
                    );
                }
            }
            let ones = vec![1.0; want.len()];
            assert_close(
                &format!("attention f16={f16} rows {rows}"),
                &got,
                &want,
                &ones,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn argmax_and_top_p_sample_like_the_cpu() {
    let Some(g) = gpu("argmax_and_top_p_sample_like_the_cpu") else {
        return;
    };
    let mut rng = XorShift::new(3);
    let (rows, v) = (8, 32000);
    let mut logits = rng.fill(rows * v, -5.0, 5.0);
    // Ties: the first maximum wins, as on the CPU.
    logits[v + 100] = 9.0;
    logits[v + 200] = 9.0;
    let ld = Buf::upload(&g, &logits).unwrap();
    let ids = Buf::<i32>::zeros(&g, rows).unwrap();
    ops::argmax(&g, ids.at(0), ld.at(0), rows, v).unwrap();
    let got = ids.read(&g, rows).unwrap();
    for r in 0..rows {
        assert_eq!(
            got[r] as u32,
            enigma_core::sampler::argmax(&logits[r * v..(r + 1) * v]),
            "row {r}"
        );
    }
    assert_eq!(got[1], 100);
    // Top-p: every pick lies inside the CPU's nucleus (the smallest top set whose mass exceeds p).
    let probs = Buf::<f32>::zeros(&g, rows * v).unwrap();
    for (temperature, top_p) in [(1.0f32, 0.9f32), (0.7, 0.5), (1.3, 0.99)] {
        for round in 0..20 {
            let coins: Vec<f32> = (0..rows).map(|_| rng.uniform(0.0, 1.0)).collect();
            let cd = Buf::upload(&g, &coins).unwrap();
            ops::sample_top_p(
                &g,
                ids.at(0),
                ld.at(0),
                probs.at(0),
                rows,
                v,
                temperature,
                top_p,
                cd.at(0),
            )
            .unwrap();
            let got = ids.read(&g, rows).unwrap();
            for r in 0..rows {
                let mut p: Vec<f32> = logits[r * v..(r + 1) * v]
                    .iter()
                    .map(|l| l / temperature)
                    .collect();
                generic::softmax(&mut p);
                let mut sorted = p.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let (mut mass, mut cut) = (0.0, 0.0);
                for s in &sorted {
                    mass += s;
                    cut = *s;
                    if mass > top_p {
                        break;
                    }
                }
                let pick = got[r] as usize;
                assert!(pick < v && p[pick] >= cut * (1.0 - 1e-4), "t {temperature} p {top_p} round {round} row {r}: token {pick} (p {}) outside the nucleus (cut {cut})", p[pick]);
            }
        }
    }
}

/// Greedy tokens of `weights` on the CPU: `n` after `prompt`, with every step's logits.
fn cpu_greedy(
    c: &Config,
    w: Weights<'_>,
    kv: KvType,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let m = Transformer::new(*c, w, kernels()).unwrap();
    let len = KvCache::len(c);
    let (f32s, f16s) = if kv == KvType::F32 {
        (len, 0)
    } else {
        (0, len)
    };
    let (mut k32, mut k16) = (vec![0.0f32; f32s], vec![f16::ZERO; f16s]);
    let mut cache = if kv == KvType::F32 {
        KvCache::new(&mut k32[..], c).unwrap()
    } else {
        KvCache::new(&mut k16[..], c).unwrap()
    };
    let mut sbuf = vec![0.0f32; Scratch::len(c, 64)];
    let mut scratch = Scratch::new(&mut sbuf, c, 64).unwrap();
    let mut logits = m
        .forward(&Serial, &mut cache, &mut scratch, prompt, 0)
        .unwrap()
        .to_vec();
    let (mut out, mut all) = (Vec::new(), Vec::new());
    for i in 0..n {
        let next = enigma_core::sampler::argmax(&logits);
        out.push(next);
        all.push(logits.clone());
        logits = m
            .forward(&Serial, &mut cache, &mut scratch, &[next], prompt.len() + i)
            .unwrap()
            .to_vec();
    }
    (out, all)
}

/// The device's greedy tokens after `prompt`, with every step's logits. With `graphs`, each decode step is
/// one CUDA graph launch (captured at the first); without, plain launches.
fn gpu_greedy(
    g: &Gpu,
    c: &Config,
    w: &Weights<'_>,
    (kv, graphs): (KvType, bool),
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut m = DeviceModel::new(g.clone(), *c, w, kv, 1).unwrap();
    m.set_graphs(graphs);
    m.forward(prompt, 0).unwrap();
    let (mut out, mut all) = (Vec::new(), Vec::new());
    for i in 0..n {
        all.push(m.logits(1).unwrap());
        let next = m.sample(enigma_cuda::Sampling::Greedy, &[0.0]).unwrap()[0];
        out.push(next);
        m.forward(&[next], prompt.len() + i).unwrap();
    }
    if graphs {
        assert_eq!(m.launches(), "one CUDA graph per decode step");
    }
    (out, all)
}

/// The largest logit difference over the steps both runs agree on, relative to the logits' spread.
fn logit_gap(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let spread = x.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
            x.iter()
                .zip(y)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()))
                / spread
        })
        .fold(0.0, f32::max)
}

#[test]
fn stories260k_greedy_matches_the_cpu() {
    let test = "stories260k_greedy_matches_the_cpu";
    let Some(g) = gpu(test) else { return };
    let Some(ckpt) = enigma_testkit::shared_bytes("models/stories260K.bin", test) else {
        return;
    };
    let Some(tok) = enigma_testkit::shared_bytes("models/tok512.bin", test) else {
        return;
    };
    let bytes = enigma_models::llama2c::import(&ckpt, &tok, "stories260K.bin").expect("import");
    let file = EnigmaFile::parse(&bytes).unwrap();
    let c = *file.config();
    let w = Weights::from_file(&file).unwrap();
    let prompt = [1u32, 403, 407, 261];
    // Every position's logits of a 300-token text (two prompt chunks), as `enigma eval` scores them.
    let text: Vec<u32> = (0..300u32).map(|i| (i * 37 + 11) % c.vocab_size).collect();
    let m = Transformer::new(c, w, kernels()).unwrap();
    let mut kvb = vec![0.0f32; KvCache::len(&c)];
    let mut cache = KvCache::new(&mut kvb[..], &c).unwrap();
    let mut sbuf = vec![0.0f32; Scratch::len(&c, 64)];
    let mut scratch = Scratch::new(&mut sbuf, &c, 64).unwrap();
    let mut cpu = Vec::new();
    m.forward_each(&Serial, &mut cache, &mut scratch, &text, 0, &mut |i, l| {
        cpu.push((i, l.to_vec()))
    })
    .unwrap();
    let mut dev = DeviceModel::new(g.clone(), c, &w, KvType::F32, 1).unwrap();
    let mut got = Vec::new();
    dev.forward_each(&text, 0, &mut |i, l| got.push((i, l.to_vec())))
        .unwrap();
    let (ci, cl): (Vec<usize>, Vec<Vec<f32>>) = cpu.into_iter().unzip();
    let (gi, gl): (Vec<usize>, Vec<Vec<f32>>) = got.into_iter().unzip();
    assert_eq!(gi, ci, "the positions scored");
    let gap = logit_gap(&cl, &gl);
    assert!(gap < 1e-3, "forward_each: logits differ by {gap}");

    for (kv, graphs) in [
        (KvType::F32, true),
        (KvType::F32, false),
        (KvType::F16, true),
    ] {
        let (want, wl) = cpu_greedy(&c, w, kv, &prompt, 64);
        let (got, gl) = gpu_greedy(&g, &c, &w, (kv, graphs), &prompt, 64);
        let gap = logit_gap(&wl, &gl);
        assert_eq!(got, want, "kv {kv:?} graphs {graphs}: logit gap {gap}");
        assert!(
            gap < 1e-3,
            "kv {kv:?} graphs {graphs}: logits differ by {gap}"
        );
    }
}

/// A random-weight `small` preset (512 wide, 8 layers, GQA 8/4) in every weight type: the device's first 64
/// greedy tokens equal the CPU's for f32 and the quantized types (whose activations the device quantizes as
/// the CPU does), and f16/bf16 logits stay within tolerance (the prompt's GEMM rounds activations).
#[test]
fn small_preset_greedy_matches_the_cpu_in_every_dtype() {
    let Some(g) = gpu("small_preset_greedy_matches_the_cpu_in_every_dtype") else {
        return;
    };
    let mut c = Preset::by_name("small").unwrap().config(4096);
    c.seq_len = 256;
    let layout = ParamLayout::new(&c);
    let mut rng = XorShift::new(42);
    let flat = rng.fill(layout.total_numel() as usize, -0.08, 0.08);
    let mut flat = flat;
    // Norm weights near one, as trained models have them.
    for spec in layout.iter().filter(|s| s.is_norm()) {
        let off = layout.flat_offset(spec.name).unwrap() as usize;
        for v in &mut flat[off..off + spec.numel() as usize] {
            *v += 1.0;
        }
    }
    let base = Weights::from_flat(&c, &flat).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 97 + 5) % 4096).collect();
    for dtype in DTYPES {
        // Every matrix in `dtype`; norms stay f32, as in files.
        let own = |v: WeightView<'_>| {
            let mut f = vec![0.0; v.rows() * v.cols()];
            for r in 0..v.rows() {
                v.row_to_f32(r, &mut f[r * v.cols()..(r + 1) * v.cols()]);
            }
            (Owned::of(dtype, &f), v.cols())
        };
        let mats: Vec<(Owned, usize)> = [
            base.token_embedding,
            base.wq,
            base.wk,
            base.wv,
            base.wo,
            base.w1,
            base.w2,
            base.w3,
            base.classifier,
        ]
        .into_iter()
        .map(own)
        .collect();
        let v = |i: usize| mats[i].0.view(mats[i].1);
        let w = Weights {
            token_embedding: v(0),
            wq: v(1),
            wk: v(2),
            wv: v(3),
            wo: v(4),
            w1: v(5),
            w2: v(6),
            w3: v(7),
            classifier: v(8),
            ..base
        };
        let (want, wl) = cpu_greedy(&c, w, KvType::F32, &prompt, 64);
        let (got, gl) = gpu_greedy(&g, &c, &w, (KvType::F32, true), &prompt, 64);
        let gap = logit_gap(&wl, &gl);
        let tol = match dtype {
            "f16" => 5e-3,
            "bf16" => 3e-2,
            _ => 1e-3,
        };
        assert!(gap < tol, "{dtype}: logits differ by {gap} of their spread");
        if !matches!(dtype, "f16" | "bf16") {
            assert_eq!(got, want, "{dtype}: logit gap {gap}");
        }
    }
}

/// Batched decode: 8 sequences, each fed its own prompt into its own slot, then one step of all 8 together
/// (each weight read once for all of them), against each sequence alone on the CPU; f32 and q8_0 weights.
#[test]
fn batched_decode_matches_each_sequence_alone() {
    let Some(g) = gpu("batched_decode_matches_each_sequence_alone") else {
        return;
    };
    let mut c = Preset::by_name("small").unwrap().config(4096);
    c.seq_len = 64;
    let layout = ParamLayout::new(&c);
    let flat = XorShift::new(17).fill(layout.total_numel() as usize, -0.08, 0.08);
    let base = Weights::from_flat(&c, &flat).unwrap();
    for dtype in ["f32", "q8_0"] {
        let own = |v: WeightView<'_>| {
            let mut f = vec![0.0; v.rows() * v.cols()];
            for r in 0..v.rows() {
                v.row_to_f32(r, &mut f[r * v.cols()..(r + 1) * v.cols()]);
            }
            (Owned::of(dtype, &f), v.cols())
        };
        let mats: Vec<(Owned, usize)> = [
            base.token_embedding,
            base.wq,
            base.wk,
            base.wv,
            base.wo,
            base.w1,
            base.w2,
            base.w3,
            base.classifier,
        ]
        .into_iter()
        .map(own)
        .collect();
        let v = |i: usize| mats[i].0.view(mats[i].1);
        let w = Weights {
            token_embedding: v(0),
            wq: v(1),
            wk: v(2),
            wv: v(3),
            wo: v(4),
            w1: v(5),
            w2: v(6),
            w3: v(7),
            classifier: v(8),
            ..base
        };
        let seqs = 8;
        let prompts: Vec<Vec<u32>> = (0..seqs as u32)
            .map(|s| (0..5 + s).map(|i| (s * 131 + i * 17 + 1) % 4096).collect())
            .collect();
        let next: Vec<u32> = (0..seqs as u32).map(|s| (s * 7 + 3) % 4096).collect();
        let mut dev = DeviceModel::new(g.clone(), c, &w, KvType::F32, seqs).unwrap();
        for (s, p) in prompts.iter().enumerate() {
            dev.forward_slot(s, p, 0).unwrap();
        }
        let rows: Vec<(u32, usize, usize)> =
            (0..seqs).map(|s| (next[s], prompts[s].len(), s)).collect();
        dev.decode_batch(&rows).unwrap();
        let got = dev.logits(seqs).unwrap();
        let vsize = c.vocab_size as usize;
        for s in 0..seqs {
            let mut fed = prompts[s].clone();
            fed.push(next[s]);
            let (_, want) = cpu_greedy(&c, w, KvType::F32, &fed, 1);
            let gap = logit_gap(&want[..1], &[got[s * vsize..(s + 1) * vsize].to_vec()]);
            assert!(gap < 1e-3, "{dtype} sequence {s}: logits differ by {gap}");
        }
    }
}
