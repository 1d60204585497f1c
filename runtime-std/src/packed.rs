//! Load-time packed copies of a model's q8_0/q4_0 matrices for the int8 GEMM (`enigma_kernels::qgemm`).
//!
//! The `.enigma` file keeps its row-major blocks; a host whose kernel table has a GEMM micro-kernel for the
//! dtype gets a repacked copy of every projection (and the classifier) in [`huge_buffer`] memory, and the
//! forward pass reads those views for prefill and decode alike, so only one copy is hot (the file's
//! quantized matrices are then only read for the embedding rows). `ENIGMA_PACKED=0` keeps the row-major path
//! (for comparisons).

use crate::load::huge_buffer;
use enigma_core::kernels::qgemm::{pack_q4_0, pack_q8_0, PackedFormat};
use enigma_core::kernels::{DType, Kernels, WeightView};
use enigma_core::Weights;

/// The packed matrices of one model, in [`matrices`] order; `None` where a matrix stays row-major.
pub(crate) struct PackedWeights {
    mats: Vec<Option<memmap2::MmapMut>>,
}

/// The matrices the forward pass multiplies by (not the embedding, which is only looked up by row).
fn matrices<'w, 'a>(w: &'w mut Weights<'a>) -> [&'w mut WeightView<'a>; 8] {
    [
        &mut w.wq,
        &mut w.wk,
        &mut w.wv,
        &mut w.wo,
        &mut w.w1,
        &mut w.w2,
        &mut w.w3,
        &mut w.classifier,
    ]
}

/// Whether `ENIGMA_PACKED` allows packing (anything but `0`).
fn enabled() -> bool {
    std::env::var("ENIGMA_PACKED").map_or(true, |v| v != "0")
}

/// Packs every quantized matrix of `w` that `kernels` has a micro-kernel for. A matrix whose buffer cannot
/// be had stays row-major: packing only makes things faster, never possible.
pub(crate) fn pack(w: &Weights<'_>, kernels: &Kernels) -> PackedWeights {
    let mut w = *w;
    let on = enabled();
    let mats = matrices(&mut w)
        .into_iter()
        .map(|m| {
            let (rows, cols) = (m.rows(), m.cols());
            let f = match *m {
                WeightView::Q8_0 { .. } if on && kernels.qgemm_q8_0.is_some() => PackedFormat::Q8_0,
                WeightView::Q4_0 { .. } if on && kernels.qgemm_q4_0.is_some() => PackedFormat::Q4_0,
                _ => return None,
            };
            let mut buf = huge_buffer(f.packed_len(rows, cols)?).ok()?;
            match *m {
                WeightView::Q8_0 { blocks, .. } => pack_q8_0(blocks, rows, cols, &mut buf),
                WeightView::Q4_0 { blocks, .. } => pack_q4_0(blocks, rows, cols, &mut buf),
                _ => return None,
            }
            Some(buf)
        })
        .collect();
    PackedWeights { mats }
}

/// Points the matrices of `w` that were packed at their packed copies.
pub(crate) fn view<'a>(w: &mut Weights<'a>, p: &'a PackedWeights) {
    for (m, buf) in matrices(w).into_iter().zip(&p.mats) {
        let Some(buf) = buf else { continue };
        let dtype: DType = m.dtype();
        if let Ok(v) = WeightView::packed(dtype, buf, m.rows(), m.cols()) {
            *m = v;
        }
    }
}
