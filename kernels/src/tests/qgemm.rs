//! The packed int8 GEMM ([`crate::qgemm`]) of each tier against the row-major scalar reference: the packed
//! layout, the frame's token and column tiles and row windows, and every micro-kernel.
//!
//! Tolerance, as for the quantized matvecs (`ops::q_case`): the packed and row-major paths quantize `x`
//! identically and their block dots are exact integers, so results differ only in the float sum over the
//! blocks and the FMA rounding of each block's scale product: `atol = (nb + 4) · 2ε · Σ_j |w_j · x_j|` per
//! output, `rtol = 1e-5`.

use super::ops::{data, q4_blocks, q8_blocks};
use super::{assert_close, check, close};
use crate::dispatch::GENERIC as G;
use crate::qgemm::{pack_q4_0, pack_q8_0, PackedFormat, QG};
use crate::quant::{BlockQ4_0, BlockQ8_0, QK};
use crate::{DType, Kernels, WeightView};
use half::f16;
use proptest::prelude::*;
use std::{vec, vec::Vec};

fn packed_q8(w: &[BlockQ8_0], rows: usize, cols: usize) -> Vec<u8> {
    let len = PackedFormat::Q8_0.packed_len(rows, cols).expect("size");
    let mut p = vec![0xa5; len];
    pack_q8_0(w, rows, cols, &mut p);
    p
}

fn packed_q4(w: &[BlockQ4_0], rows: usize, cols: usize) -> Vec<u8> {
    let len = PackedFormat::Q4_0.packed_len(rows, cols).expect("size");
    let mut p = vec![0xa5; len];
    pack_q4_0(w, rows, cols, &mut p);
    p
}

/// `(packed, row-major)` views of the same q8_0 and q4_0 matrices `(rows, d)`.
fn pairs<'a>(
    (p8, w8): (&'a [u8], &'a [BlockQ8_0]),
    (p4, w4): (&'a [u8], &'a [BlockQ4_0]),
    rows: usize,
    d: usize,
) -> [(WeightView<'a>, WeightView<'a>); 2] {
    let packed = |f, p| WeightView::packed(f, p, rows, d).expect("view");
    [
        (packed(DType::Q8_0, p8), WeightView::q8_0(w8, d)),
        (packed(DType::Q4_0, p4), WeightView::q4_0(w4, d)),
    ]
}

/// `k` on the packed window against the generic table on the same rows of the row-major matrix.
fn case(
    k: &Kernels,
    packed: WeightView<'_>,
    rowmajor: WeightView<'_>,
    x: &[f32],
    t: usize,
) -> Result<(), TestCaseError> {
    let (n, d) = (rowmajor.rows(), rowmajor.cols());
    prop_assert_eq!((packed.rows(), packed.cols()), (n, d));
    let (mut got, mut want) = (vec![f32::NAN; t * n], vec![0.0; t * n]);
    k.matmul(&mut got, packed, x, t);
    G.matmul(&mut want, rowmajor, x, t);
    let mut row = vec![0.0; d];
    for r in 0..n {
        rowmajor.row_to_f32(r, &mut row);
        for i in 0..t {
            let xi = &x[i * d..(i + 1) * d];
            let mag: f32 = row.iter().zip(xi).map(|(a, b)| (a * b).abs()).sum();
            let atol = (d / QK + 4) as f32 * 2.0 * f32::EPSILON * mag;
            let at = i * n + r;
            close("qgemm", &got[at..=at], &want[at..=at], atol, 1e-5)?;
        }
    }
    Ok(())
}

/// `(rows, nb, t, window start, window rows)`: ragged rows (tails of every group size), 1 to 70 tokens
/// (register tiles, the frame's 16-token tiles and their tails).
fn shape(
    max_rows: usize,
    nbs: core::ops::Range<usize>,
    max_t: usize,
) -> impl Strategy<Value = (usize, usize, usize, usize, usize)> {
    (1..max_rows, nbs, 1..=max_t).prop_flat_map(|(rows, nb, t)| {
        (0..rows).prop_flat_map(move |s| (Just(rows), Just(nb), Just(t), Just(s), 0..=rows - s))
    })
}

fn prop(k: &Kernels, cases: u32, max_rows: usize, nbs: core::ops::Range<usize>, max_t: usize) {
    let s = shape(max_rows, nbs, max_t).prop_flat_map(|(rows, nb, t, s, n)| {
        (
            Just((rows, nb, t, s, n)),
            q8_blocks(rows * nb),
            q4_blocks(rows * nb),
            data(t * nb * QK),
        )
    });
    check(cases, s, |((rows, nb, t, s, n), w8, w4, x)| {
        let d = nb * QK;
        let (p8, p4) = (packed_q8(&w8, rows, d), packed_q4(&w4, rows, d));
        for (p, rm) in pairs((&p8, &w8), (&p4, &w4), rows, d) {
            case(k, p.slice_rows(s, n), rm.slice_rows(s, n), &x, t)?;
        }
        Ok(())
    });
}

/// Ragged shapes: rows 1..70 in windows, 1..10 blocks, 1..70 tokens.
pub(crate) fn prop_qgemm(k: &Kernels) {
    prop(k, 48, 70, 1..10, 70);
}

/// Rows wider than the frame's column tile (128 blocks): several column chunks, the last one partial.
pub(crate) fn prop_qgemm_chunks(k: &Kernels) {
    prop(k, 4, 20, 127..260, 18);
}

/// Decode through `matvec` (one token), as the forward pass calls it on each thread's rows.
pub(crate) fn prop_qgemm_matvec(k: &Kernels) {
    let s = shape(70, 1..10, 1).prop_flat_map(|(rows, nb, _, s, n)| {
        (Just((rows, nb, s, n)), q8_blocks(rows * nb), data(nb * QK))
    });
    check(48, s, |((rows, nb, s, n), w8, x)| {
        let d = nb * QK;
        let p8 = packed_q8(&w8, rows, d);
        let v8 = WeightView::packed(DType::Q8_0, &p8, rows, d).expect("view");
        let (mut got, mut want) = (vec![f32::NAN; n], vec![0.0; n]);
        k.matvec(&mut got, v8.slice_rows(s, n), &x);
        G.matmul(&mut want, WeightView::q8_0(&w8, d).slice_rows(s, n), &x, 1);
        close("qgemm matvec", &got, &want, 1e-3, 1e-4)
    });
}

/// The integer extremes over a whole column tile: q8_0 weights of -128 and 127, q4_0 nibbles of 0 and 15,
/// activations of ±127 at scale 1. The zero-point corrections (`-128 Σx`, `-8 Σx`) and the i16 pair sums of
/// the AVX2 kernels must stay exact here.
pub(crate) fn edge_qgemm_extremes(k: &Kernels) {
    let (rows, nb, t) = (QG + 3, 128, 9);
    let d = nb * QK;
    let d1 = f16::from_f32(1.0).to_bits();
    for (wv, xv) in [
        (-128i8, 127.0f32),
        (-128, -127.0),
        (127, 127.0),
        (127, -127.0),
    ] {
        let x: Vec<f32> = (0..t * d)
            .map(|j| if (j / QK).is_multiple_of(3) { -xv } else { xv })
            .collect();
        let w8 = vec![
            BlockQ8_0 {
                d: d1,
                qs: [wv; QK]
            };
            rows * nb
        ];
        let nib = if wv < 0 { 0x00 } else { 0xff };
        let w4 = vec![
            BlockQ4_0 {
                d: d1,
                qs: [nib; QK / 2]
            };
            rows * nb
        ];
        let p8 = packed_q8(&w8, rows, d);
        let p4 = packed_q4(&w4, rows, d);
        for (p, rm) in pairs((&p8, &w8), (&p4, &w4), rows, d) {
            let (mut got, mut want) = (vec![0.0; t * rows], vec![0.0; t * rows]);
            k.matmul(&mut got, p, &x, t);
            G.matmul(&mut want, rm, &x, t);
            assert_close("qgemm extremes", &got, &want, 0.0, 1e-6);
        }
    }
}

/// Packing loses nothing: every row of the packed copy reads back as the row-major one, including the rows of
/// a last, partial group; the padding rows are zero.
#[test]
fn pack_round_trip() {
    let s = (1usize..40, 1usize..6)
        .prop_flat_map(|(rows, nb)| (Just((rows, nb)), q8_blocks(rows * nb), q4_blocks(rows * nb)));
    check(32, s, |((rows, nb), w8, w4)| {
        let d = nb * QK;
        let p8 = packed_q8(&w8, rows, d);
        let p4 = packed_q4(&w4, rows, d);
        let (mut got, mut want) = (vec![0.0; d], vec![0.0; d]);
        for (p, rm) in pairs((&p8, &w8), (&p4, &w4), rows, d) {
            for r in 0..rows {
                p.row_to_f32(r, &mut got);
                rm.row_to_f32(r, &mut want);
                prop_assert_eq!(&got, &want);
            }
        }
        Ok(())
    });
}

/// The packed views refuse what they cannot hold.
#[test]
fn packed_view_checks() {
    let p = vec![0u8; PackedFormat::Q8_0.packed_len(17, 64).expect("size")];
    assert!(WeightView::packed(DType::Q8_0, &p, 17, 64).is_ok());
    assert!(WeightView::packed(DType::Q8_0, &p, 33, 64).is_err());
    assert!(WeightView::packed(DType::Q4_0, &p, 17, 64).is_err());
    assert!(WeightView::packed(DType::F32, &p, 17, 64).is_err());
    assert_eq!(PackedFormat::Q4_0.packed_len(1, 33), None);
    assert_eq!(PackedFormat::Q8_0.packed_len(usize::MAX, 64), None);
}

/// The tier's activation quantizer against [`crate::qgemm::quantize_x`], bit for bit (it must be: the
/// packed and row-major paths see the same quants), on blocks of ordinary, tiny, huge, zero, infinite and
/// NaN values, with ties at `.5` after scaling.
pub(crate) fn prop_quantize_x(k: &Kernels) {
    let special = prop_oneof![
        4 => -4.0f32..4.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::NAN),
        1 => Just(1e-40f32),
        1 => Just(-3e38f32),
    ];
    let block = proptest::collection::vec(special, QK);
    // A 127 makes the scale exactly 1, so values `i + 0.5` stay ties for the rounding.
    let ties = proptest::collection::vec((-126i32..126).prop_map(|i| i as f32 + 0.5), QK - 1)
        .prop_map(|mut b| {
            b.insert(0, 127.0);
            b
        });
    let s = proptest::collection::vec(prop_oneof![block, ties], 1..6);
    check(256, s, |blocks| {
        let x: Vec<f32> = blocks.concat();
        let nb = x.len() / QK;
        let (mut got, mut want) = (
            vec![crate::qgemm::XBlock::ZERO; nb],
            vec![crate::qgemm::XBlock::ZERO; nb],
        );
        (k.quantize_x())(&x, &mut got);
        crate::qgemm::quantize_x(&x, &mut want);
        prop_assert_eq!(got, want);
        Ok(())
    });
}
