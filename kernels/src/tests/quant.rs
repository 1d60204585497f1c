//! Quantization formats: round trips within each format's error bound, llama.cpp's exact encodings, the
//! x-quantization error budget of the quantized matvec, and zero-copy views over file bytes.

use super::check;
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use crate::{generic as g, DType, Kernels, ViewError, WeightView};
use half::{bf16, f16};
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use std::{vec, vec::Vec};

/// Whole blocks of values spread over magnitudes `2^-20..2^max_exp` (each block gets its own scale).
fn blocks_data(max_exp: i32) -> impl Strategy<Value = Vec<f32>> {
    (1usize..6).prop_flat_map(move |nb| {
        pvec(
            (pvec(-1.0f32..1.0, QK), -20i32..max_exp).prop_map(|(v, e)| {
                v.into_iter()
                    .map(|x| x * libm::exp2f(e as f32))
                    .collect::<Vec<_>>()
            }),
            nb,
        )
        .prop_map(|bs| bs.concat())
    })
}

/// q8_0: `|x - deq(q(x))| <= d/2 + 127·|d - f16(d)|` with `d = amax/127`: half a step, plus what storing the
/// scale as f16 moves the largest code (llama.cpp rounds with the f32 scale, then stores it as f16).
#[test]
fn q8_0_round_trip() {
    check(128, blocks_data(20), |x| {
        let mut q = vec![BlockQ8_0::ZERO; x.len() / QK];
        g::quantize_q8_0(&x, &mut q);
        let mut y = vec![0.0; x.len()];
        g::dequantize_q8_0(&q, &mut y);
        for (b, (xs, ys)) in q.iter().zip(x.chunks(QK).zip(y.chunks(QK))) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let bound = d / 2.0 + 127.0 * (d - b.scale()).abs() + amax * 1e-6;
            for (a, r) in xs.iter().zip(ys) {
                prop_assert!((a - r).abs() <= bound, "{} -> {} (bound {})", a, r, bound);
            }
        }
        Ok(())
    });
}

/// The quantizer's rounding is libm's `roundf` then a saturating cast, bit for bit: halves, the floats next
/// to them, the ends of the i8 range, non-finite values, and random values across the whole range.
#[test]
fn q8_0_rounding_matches_roundf() {
    let want = |y: f32| libm::roundf(y) as i8;
    let mut edges = vec![
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN,
        0.0,
        -0.0,
    ];
    for k in -260i32..=260 {
        let h = k as f32 * 0.5;
        edges.extend([
            h,
            f32::from_bits(h.to_bits() + 1),
            f32::from_bits(h.to_bits().saturating_sub(1)),
        ]);
    }
    for y in edges {
        assert_eq!(crate::quant::round_half_away(y), want(y), "{y:e}");
    }
    check(2048, -140.0f32..140.0, |y| {
        prop_assert_eq!(crate::quant::round_half_away(y), want(y), "{:e}", y);
        Ok(())
    });
    check(2048, any::<u32>(), |b| {
        let y = f32::from_bits(b);
        prop_assert_eq!(crate::quant::round_half_away(y), want(y), "{:e}", y);
        Ok(())
    });
}

/// q4_0: `|x - deq(q(x))| <= |d| + 8·|d - f16(d)|`: a full step, because the value opposite the extreme
/// one maps to code 16, clamped to 15.
#[test]
fn q4_0_round_trip() {
    // q4_0's scale is amax / 8: past 2^19 it overflows f16 (as in llama.cpp), so magnitudes stop at 2^16.
    check(128, blocks_data(16), |x| {
        let mut q = vec![BlockQ4_0::ZERO; x.len() / QK];
        g::quantize_q4_0(&x, &mut q);
        let mut y = vec![0.0; x.len()];
        g::dequantize_q4_0(&q, &mut y);
        for (b, (xs, ys)) in q.iter().zip(x.chunks(QK).zip(y.chunks(QK))) {
            let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 8.0;
            let bound = d + 8.0 * (d - b.scale().abs()).abs() + amax * 1e-6;
            for (a, r) in xs.iter().zip(ys) {
                prop_assert!((a - r).abs() <= bound, "{} -> {} (bound {})", a, r, bound);
            }
        }
        Ok(())
    });
}

/// f16: relative half-ulp `2^-11` in the normal range, absolute `2^-25` among subnormals. bf16: `2^-8`.
#[test]
fn f16_bf16_round_trip() {
    check(128, pvec(-6e4f32..6e4, 0..200), |x| {
        let mut h = vec![f16::ZERO; x.len()];
        g::quantize_f16(&x, &mut h);
        let mut b = vec![bf16::ZERO; x.len()];
        g::quantize_bf16(&x, &mut b);
        let (mut yh, mut yb) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        g::dequantize_f16(&h, &mut yh);
        g::dequantize_bf16(&b, &mut yb);
        for ((a, rh), rb) in x.iter().zip(&yh).zip(&yb) {
            prop_assert!((a - rh).abs() <= a.abs() * libm::exp2f(-11.0) + libm::exp2f(-25.0));
            prop_assert!((a - rb).abs() <= a.abs() * libm::exp2f(-8.0));
        }
        Ok(())
    });
    let mut y = [0.0; 3];
    g::dequantize_f16(
        &[f16::from_f32(1e-7), f16::INFINITY, f16::from_f32(65504.0)],
        &mut y,
    );
    assert_eq!(y[1..], [f32::INFINITY, 65504.0]);
    assert!((y[0] - 1e-7).abs() <= libm::exp2f(-25.0));
}

/// Encodings byte for byte as llama.cpp writes them.
#[test]
fn llama_cpp_encodings() {
    // q8_0 of 0..32: d = 31/127, codes round(j · 127/31), last one 127.
    let x: Vec<f32> = (0..32).map(|j| j as f32).collect();
    let mut q = [BlockQ8_0::ZERO];
    g::quantize_q8_0(&x, &mut q);
    assert_eq!(q[0].d, f16::from_f32(31.0 / 127.0).to_bits());
    let want: Vec<i8> = (0..32)
        .map(|j| libm::roundf(j as f32 * 127.0 / 31.0) as i8)
        .collect();
    assert_eq!(q[0].qs.to_vec(), want);
    assert_eq!(q[0].qs[31], 127);

    // q4_0: the extreme value -8 sets d = -8/-8 = 1; code = x + 8; byte j = element j | element j+16 << 4.
    let x: Vec<f32> = (0..32).map(|j| ((j * 5) % 16) as f32 - 8.0).collect();
    let mut q = [BlockQ4_0::ZERO];
    g::quantize_q4_0(&x, &mut q);
    assert_eq!(q[0].scale(), 1.0);
    for j in 0..16 {
        let lo = (j * 5) % 16;
        let hi = ((j + 16) * 5) % 16;
        assert_eq!(q[0].qs[j], (lo | (hi << 4)) as u8, "byte {j}");
    }
    let mut y = [0.0; 32];
    g::dequantize_q4_0(&q, &mut y);
    assert_eq!(y.to_vec(), x);

    // All zeros: scale 0, codes 0 (q8_0) and 8 (q4_0), both decoding to 0.
    let mut q8 = [BlockQ8_0::ZERO];
    g::quantize_q8_0(&[0.0; 32], &mut q8);
    assert_eq!(q8[0], BlockQ8_0::ZERO);
    let mut q4 = [BlockQ4_0::ZERO];
    g::quantize_q4_0(&[0.0; 32], &mut q4);
    assert_eq!(q4[0].qs, [0x88; 16]);
    assert_eq!(q4[0].scale(), 0.0);
}

/// The quantized matvec against f32 on the same (dequantized) weights: the only error is quantizing x, so
/// `|got - want| <= Σ_j |w_j| · e_j` with `e_j` the q8_0 bound of x's block (plus float rounding).
#[test]
fn quantized_matvec_error_budget() {
    let s = (1usize..6, 1usize..5).prop_flat_map(|(n, nb)| {
        (
            Just(n),
            pvec(-1.0f32..1.0, n * nb * QK),
            pvec(-1.0f32..1.0, nb * QK),
        )
    });
    check(64, s, |(n, w, x)| {
        let d = x.len();
        let mut xq = vec![BlockQ8_0::ZERO; d / QK];
        g::quantize_q8_0(&x, &mut xq);
        let e: Vec<f32> = x
            .chunks(QK)
            .zip(&xq)
            .flat_map(|(xs, b)| {
                let dd = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                let e = dd / 2.0 + 127.0 * (dd - b.scale()).abs();
                core::iter::repeat_n(e, QK)
            })
            .collect();
        let mut w8 = vec![BlockQ8_0::ZERO; w.len() / QK];
        g::quantize_q8_0(&w, &mut w8);
        let mut w4 = vec![BlockQ4_0::ZERO; w.len() / QK];
        g::quantize_q4_0(&w, &mut w4);
        for view in [WeightView::q8_0(&w8, d), WeightView::q4_0(&w4, d)] {
            let mut deq = vec![0.0; w.len()];
            for r in 0..n {
                view.row_to_f32(r, &mut deq[r * d..(r + 1) * d]);
            }
            let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
            crate::kernels().matvec(&mut got, view, &x);
            g::matvec_f32(&mut want, &deq, &x);
            for r in 0..n {
                let row = &deq[r * d..(r + 1) * d];
                let budget: f32 =
                    row.iter().zip(&e).map(|(a, b)| a.abs() * b).sum::<f32>() * 1.001 + 1e-5;
                prop_assert!(
                    (got[r] - want[r]).abs() <= budget,
                    "{} row {}",
                    view.dtype().name(),
                    r
                );
            }
        }
        Ok(())
    });
}

/// `from_bytes` views each dtype in place and refuses bad lengths, misalignment and unknown dtypes.
#[test]
fn views_from_bytes() {
    // 2 rows x 64 cols in every dtype; bytes start 8-aligned in a u64 buffer.
    let (rows, cols) = (2usize, 64usize);
    let x: Vec<f32> = (0..rows * cols).map(|i| (i as f32 - 60.0) / 16.0).collect();
    let mut h = vec![f16::ZERO; x.len()];
    g::quantize_f16(&x, &mut h);
    let mut b = vec![bf16::ZERO; x.len()];
    g::quantize_bf16(&x, &mut b);
    let mut q8 = vec![BlockQ8_0::ZERO; x.len() / QK];
    g::quantize_q8_0(&x, &mut q8);
    let mut q4 = vec![BlockQ4_0::ZERO; x.len() / QK];
    g::quantize_q4_0(&x, &mut q4);
    let cases: [(DType, &[u8]); 5] = [
        (DType::F32, bytemuck::cast_slice(&x)),
        (DType::F16, bytemuck::cast_slice(&h)),
        (DType::BF16, bytemuck::cast_slice(&b)),
        (DType::Q8_0, bytemuck::cast_slice(&q8)),
        (DType::Q4_0, bytemuck::cast_slice(&q4)),
    ];
    for (dt, bytes) in cases {
        let (mut buf, mut shifted) = (
            vec![0u64; bytes.len() / 8 + 2],
            vec![0u64; bytes.len() / 8 + 2],
        );
        let raw: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
        raw[..bytes.len()].copy_from_slice(bytes);
        let at0 = &raw[..bytes.len()];
        let sh: &mut [u8] = bytemuck::cast_slice_mut(&mut shifted);
        sh[1..bytes.len() + 1].copy_from_slice(bytes);
        let v = WeightView::from_bytes(dt, at0, rows, cols).expect("view");
        assert_eq!((v.dtype(), v.rows(), v.cols()), (dt, rows, cols));
        // Zero-copy: the view points into the buffer.
        let first = match v {
            WeightView::F32 { data, .. } => data.as_ptr() as *const u8,
            WeightView::F16 { data, .. } => data.as_ptr() as *const u8,
            WeightView::BF16 { data, .. } => data.as_ptr() as *const u8,
            WeightView::Q8_0 { blocks, .. } => blocks.as_ptr() as *const u8,
            WeightView::Q4_0 { blocks, .. } => blocks.as_ptr() as *const u8,
            #[cfg(feature = "kquants")]
            WeightView::Q4K { blocks, .. } => blocks.as_ptr() as *const u8,
            #[cfg(feature = "kquants")]
            WeightView::Q6K { blocks, .. } => blocks.as_ptr() as *const u8,
            WeightView::Q8_0x16(p) | WeightView::Q4_0x16(p) => p.data.as_ptr(),
        };
        assert_eq!(first, at0.as_ptr());
        // Row 1 through slice_rows equals row 1 directly, and equals the format's own dequantization.
        let (mut r1, mut s1) = (vec![0.0; cols], vec![0.0; cols]);
        v.row_to_f32(1, &mut r1);
        v.slice_rows(1, 1).row_to_f32(0, &mut s1);
        assert_eq!(r1, s1, "{}", dt.name());
        let tol = match dt {
            DType::F32 | DType::F16 => 0.0,
            DType::BF16 => 0.01,
            // One q8_0 step is amax/127 ≈ 0.034 here, one q4_0 step amax/8 ≈ 0.53 (its bound is a full step).
            DType::Q8_0 => 0.02,
            _ => 0.55,
        };
        for (a, b) in r1.iter().zip(&x[cols..]) {
            assert!((a - b).abs() <= tol, "{} {a} vs {b}", dt.name());
        }
        // Odd start address: every dtype needs at least 2-byte alignment.
        let odd = &sh[1..bytes.len() + 1];
        assert_eq!(
            WeightView::from_bytes(dt, odd, rows, cols).err(),
            Some(ViewError::Misaligned)
        );
        // Wrong length.
        assert_eq!(
            WeightView::from_bytes(dt, &at0[..bytes.len() - 2], rows, cols).err(),
            Some(ViewError::Length)
        );
    }
    // Quantized rows must be whole blocks, even when the total is.
    let q8b: &[u8] = bytemuck::cast_slice(&q8);
    assert_eq!(
        WeightView::from_bytes(DType::Q8_0, q8b, 8, 16).err(),
        Some(ViewError::Length)
    );
    assert_eq!(
        WeightView::from_bytes(DType::U8, &[0; 4], 2, 2).err(),
        Some(ViewError::UnsupportedDType(DType::U8))
    );
}

/// Every tier's table through `Kernels::matvec` on a view built from file bytes (the path core uses).
#[test]
fn every_supported_tier_runs_views() {
    let x: Vec<f32> = (0..64).map(|i| (i as f32).sin()).collect();
    let w: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).cos()).collect();
    let mut q8 = vec![BlockQ8_0::ZERO; w.len() / QK];
    g::quantize_q8_0(&w, &mut q8);
    let view = WeightView::from_bytes(DType::Q8_0, bytemuck::cast_slice(&q8), 3, 64).expect("view");
    let mut want = [0.0; 3];
    crate::dispatch::GENERIC.matvec(&mut want, view, &x);
    for t in crate::Tier::ALL {
        if let Ok(k) = crate::kernels_for(t) {
            let k: &Kernels = k;
            let mut got = [0.0; 3];
            k.matvec(&mut got, view, &x);
            super::assert_close(k.variant, &got, &want, 1e-4, 1e-5);
        }
    }
}
