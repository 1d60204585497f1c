//! The one view of a weight matrix that the forward pass reads through, whatever its storage dtype.

#[cfg(feature = "kquants")]
use crate::kquants::{BlockQ4K, BlockQ6K};
use crate::kquants::{KQuant, QK_K};
use crate::qgemm::{Packed, PackedFormat};
use crate::quant::{dequantize_q4_0, dequantize_q8_0, BlockQ4_0, BlockQ8_0, QK};
use half::{bf16, f16};

/// Storage types of tensors in a `.enigma` file. The codes are the on-disk values (docs/FORMAT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q4_0 = 4,
    /// GGML's Q4_K super-blocks, kept as a GGUF file has them (GGML's type number)
    Q4K = 12,
    /// GGML's Q6_K super-blocks (GGML's type number)
    Q6K = 14,
    U8 = 16,
    U32 = 17,
}

impl DType {
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4K,
        DType::Q6K,
        DType::U8,
        DType::U32,
    ];

    pub fn from_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u8 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4K => "q4_K",
            DType::Q6K => "q6_K",
            DType::U8 => "u8",
            DType::U32 => "u32",
        }
    }

    /// Elements per storage block (32 for q8_0 and q4_0, 256 for the k-quants, else 1).
    pub fn block_elems(self) -> usize {
        match self {
            DType::Q8_0 | DType::Q4_0 => 32,
            DType::Q4K | DType::Q6K => QK_K,
            _ => 1,
        }
    }

    /// Bytes per storage block: q8_0 is an f16 scale and 32 i8, q4_0 an f16 scale and 16 bytes of nibbles.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4K => KQuant::Q4K.block_bytes(),
            DType::Q6K => KQuant::Q6K.block_bytes(),
        }
    }

    /// Bytes that `n` elements take, or `None` when `n` is not a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let b = self.block_elems() as u64;
        if !n.is_multiple_of(b) {
            return None;
        }
        (n / b).checked_mul(self.block_bytes() as u64)
    }
}

/// A read-only weight matrix `(rows, cols)`, row-major, in one of the dtypes the kernels multiply.
///
/// This is the single seam at the matmul boundary: the model holds these and never matches on dtype itself.
/// Quantized rows are whole blocks: `cols` is a multiple of 32 (256 for the k-quants) and a row is that many
/// blocks.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    /// (rows, cols)
    F32 { data: &'a [f32], cols: usize },
    /// (rows, cols)
    F16 { data: &'a [f16], cols: usize },
    /// (rows, cols)
    BF16 { data: &'a [bf16], cols: usize },
    /// (rows, cols / 32)
    Q8_0 {
        blocks: &'a [BlockQ8_0],
        cols: usize,
    },
    /// (rows, cols / 32)
    Q4_0 {
        blocks: &'a [BlockQ4_0],
        cols: usize,
    },
    /// (rows, cols / 256)
    #[cfg(feature = "kquants")]
    Q4K { blocks: &'a [BlockQ4K], cols: usize },
    /// (rows, cols / 256)
    #[cfg(feature = "kquants")]
    Q6K { blocks: &'a [BlockQ6K], cols: usize },
    /// q8_0 repacked in groups of 16 rows for the int8 GEMM ([`crate::qgemm`]); built at load time by std
    /// hosts, never stored in a file
    Q8_0x16(Packed<'a>),
    /// q4_0 repacked in groups of 16 rows ([`crate::qgemm`])
    Q4_0x16(Packed<'a>),
}

/// Why bytes could not be viewed as a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// The kernels have no matvec for this dtype (yet).
    UnsupportedDType(DType),
    /// The byte length is not `rows * cols` elements of the dtype (or, quantized, `cols` is not whole blocks).
    Length,
    /// The bytes do not start at the alignment the dtype's elements need.
    Misaligned,
}

fn cast<T: bytemuck::Pod>(bytes: &[u8]) -> Result<&[T], ViewError> {
    // Lengths were checked before; the only way left to fail is the start address.
    bytemuck::try_cast_slice(bytes).map_err(|_| ViewError::Misaligned)
}

impl<'a> WeightView<'a> {
    /// Views little-endian tensor bytes `(rows, cols)` of `dtype` in place, without copying.
    ///
    /// Alignment needed: 4 bytes for f32, 2 for f16, bf16, q8_0, q4_0 and q4_K (their scales are `u16`), 1 for
    /// q6_K.
    pub fn from_bytes(
        dtype: DType,
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, ViewError> {
        let n = rows.checked_mul(cols).ok_or(ViewError::Length)?;
        if dtype.bytes_for(n as u64) != Some(bytes.len() as u64) {
            return Err(ViewError::Length);
        }
        if dtype.block_elems() > 1 && !cols.is_multiple_of(dtype.block_elems()) {
            return Err(ViewError::Length);
        }
        match dtype {
            DType::F32 => Ok(WeightView::F32 {
                data: cast(bytes)?,
                cols,
            }),
            DType::F16 => Ok(WeightView::F16 {
                data: cast(bytes)?,
                cols,
            }),
            DType::BF16 => Ok(WeightView::BF16 {
                data: cast(bytes)?,
                cols,
            }),
            DType::Q8_0 => Ok(WeightView::Q8_0 {
                blocks: cast(bytes)?,
                cols,
            }),
            DType::Q4_0 => Ok(WeightView::Q4_0 {
                blocks: cast(bytes)?,
                cols,
            }),
            #[cfg(feature = "kquants")]
            DType::Q4K => Ok(WeightView::Q4K {
                blocks: cast(bytes)?,
                cols,
            }),
            #[cfg(feature = "kquants")]
            DType::Q6K => Ok(WeightView::Q6K {
                blocks: cast(bytes)?,
                cols,
            }),
            other => Err(ViewError::UnsupportedDType(other)),
        }
    }

    /// `data (rows, cols)`
    pub fn f32(data: &'a [f32], cols: usize) -> Self {
        WeightView::F32 { data, cols }
    }

    /// `data (rows, cols)`
    pub fn f16(data: &'a [f16], cols: usize) -> Self {
        WeightView::F16 { data, cols }
    }

    /// `data (rows, cols)`
    pub fn bf16(data: &'a [bf16], cols: usize) -> Self {
        WeightView::BF16 { data, cols }
    }

    /// `blocks (rows, cols / 32)`; panics when `cols` is not a multiple of 32.
    pub fn q8_0(blocks: &'a [BlockQ8_0], cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK), "q8_0 rows are whole blocks of 32");
        WeightView::Q8_0 { blocks, cols }
    }

    /// `blocks (rows, cols / 32)`; panics when `cols` is not a multiple of 32.
    pub fn q4_0(blocks: &'a [BlockQ4_0], cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK), "q4_0 rows are whole blocks of 32");
        WeightView::Q4_0 { blocks, cols }
    }

    /// `data`, the packed copy of a whole `(rows, cols)` matrix ([`crate::qgemm::pack_q8_0`] or `pack_q4_0`)
    /// of `dtype` q8_0 or q4_0.
    pub fn packed(
        dtype: DType,
        data: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, ViewError> {
        let f = match dtype {
            DType::Q8_0 => PackedFormat::Q8_0,
            DType::Q4_0 => PackedFormat::Q4_0,
            other => return Err(ViewError::UnsupportedDType(other)),
        };
        if f.packed_len(rows, cols) != Some(data.len()) {
            return Err(ViewError::Length);
        }
        let p = Packed {
            data,
            cols,
            row0: 0,
            rows,
        };
        Ok(match f {
            PackedFormat::Q8_0 => WeightView::Q8_0x16(p),
            PackedFormat::Q4_0 => WeightView::Q4_0x16(p),
        })
    }

    /// The storage dtype; a packed matrix reports the dtype it was packed from.
    pub fn dtype(&self) -> DType {
        match self {
            WeightView::F32 { .. } => DType::F32,
            WeightView::F16 { .. } => DType::F16,
            WeightView::BF16 { .. } => DType::BF16,
            WeightView::Q8_0 { .. } | WeightView::Q8_0x16(_) => DType::Q8_0,
            WeightView::Q4_0 { .. } | WeightView::Q4_0x16(_) => DType::Q4_0,
            #[cfg(feature = "kquants")]
            WeightView::Q4K { .. } => DType::Q4K,
            #[cfg(feature = "kquants")]
            WeightView::Q6K { .. } => DType::Q6K,
        }
    }

    pub fn cols(&self) -> usize {
        match *self {
            WeightView::F32 { cols, .. }
            | WeightView::F16 { cols, .. }
            | WeightView::BF16 { cols, .. }
            | WeightView::Q8_0 { cols, .. }
            | WeightView::Q4_0 { cols, .. } => cols,
            #[cfg(feature = "kquants")]
            WeightView::Q4K { cols, .. } | WeightView::Q6K { cols, .. } => cols,
            WeightView::Q8_0x16(p) | WeightView::Q4_0x16(p) => p.cols,
        }
    }

    pub fn rows(&self) -> usize {
        match *self {
            WeightView::F32 { data, cols } => data.len().checked_div(cols).unwrap_or(0),
            WeightView::F16 { data, cols } => data.len().checked_div(cols).unwrap_or(0),
            WeightView::BF16 { data, cols } => data.len().checked_div(cols).unwrap_or(0),
            WeightView::Q8_0 { blocks, cols } => blocks.len().checked_div(cols / QK).unwrap_or(0),
            WeightView::Q4_0 { blocks, cols } => blocks.len().checked_div(cols / QK).unwrap_or(0),
            #[cfg(feature = "kquants")]
            WeightView::Q4K { blocks, cols } => blocks.len().checked_div(cols / QK_K).unwrap_or(0),
            #[cfg(feature = "kquants")]
            WeightView::Q6K { blocks, cols } => blocks.len().checked_div(cols / QK_K).unwrap_or(0),
            WeightView::Q8_0x16(p) | WeightView::Q4_0x16(p) => p.rows,
        }
    }

    /// Rows `[start, start + n)` as a view of their own. Panics when out of range (a caller bug, not bad data:
    /// the model validated every shape when it was loaded).
    pub fn slice_rows(&self, start: usize, n: usize) -> WeightView<'a> {
        match *self {
            WeightView::F32 { data, cols } => WeightView::F32 {
                data: &data[start * cols..(start + n) * cols],
                cols,
            },
            WeightView::F16 { data, cols } => WeightView::F16 {
                data: &data[start * cols..(start + n) * cols],
                cols,
            },
            WeightView::BF16 { data, cols } => WeightView::BF16 {
                data: &data[start * cols..(start + n) * cols],
                cols,
            },
            WeightView::Q8_0 { blocks, cols } => {
                let nb = cols / QK;
                WeightView::Q8_0 {
                    blocks: &blocks[start * nb..(start + n) * nb],
                    cols,
                }
            }
            WeightView::Q4_0 { blocks, cols } => {
                let nb = cols / QK;
                WeightView::Q4_0 {
                    blocks: &blocks[start * nb..(start + n) * nb],
                    cols,
                }
            }
            #[cfg(feature = "kquants")]
            WeightView::Q4K { blocks, cols } => {
                let nb = cols / QK_K;
                WeightView::Q4K {
                    blocks: &blocks[start * nb..(start + n) * nb],
                    cols,
                }
            }
            #[cfg(feature = "kquants")]
            WeightView::Q6K { blocks, cols } => {
                let nb = cols / QK_K;
                WeightView::Q6K {
                    blocks: &blocks[start * nb..(start + n) * nb],
                    cols,
                }
            }
            WeightView::Q8_0x16(p) => WeightView::Q8_0x16(window(p, start, n)),
            WeightView::Q4_0x16(p) => WeightView::Q4_0x16(window(p, start, n)),
        }
    }

    /// Writes row `r` as f32 into `out` `(cols)`, dequantizing: the embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        match *self {
            WeightView::F32 { data, cols } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            WeightView::F16 { data, cols } => {
                crate::quant::dequantize_f16(&data[r * cols..(r + 1) * cols], out)
            }
            WeightView::BF16 { data, cols } => {
                crate::quant::dequantize_bf16(&data[r * cols..(r + 1) * cols], out)
            }
            WeightView::Q8_0 { blocks, cols } => {
                let nb = cols / QK;
                dequantize_q8_0(&blocks[r * nb..(r + 1) * nb], out)
            }
            WeightView::Q4_0 { blocks, cols } => {
                let nb = cols / QK;
                dequantize_q4_0(&blocks[r * nb..(r + 1) * nb], out)
            }
            #[cfg(feature = "kquants")]
            WeightView::Q4K { blocks, cols } => {
                let nb = cols / QK_K;
                let b = bytemuck::cast_slice(&blocks[r * nb..(r + 1) * nb]);
                KQuant::Q4K.dequantize(b, out)
            }
            #[cfg(feature = "kquants")]
            WeightView::Q6K { blocks, cols } => {
                let nb = cols / QK_K;
                let b = bytemuck::cast_slice(&blocks[r * nb..(r + 1) * nb]);
                KQuant::Q6K.dequantize(b, out)
            }
            WeightView::Q8_0x16(p) => crate::qgemm::unpack_row(PackedFormat::Q8_0, &p, r, out),
            WeightView::Q4_0x16(p) => crate::qgemm::unpack_row(PackedFormat::Q4_0, &p, r, out),
        }
    }
}

/// Rows `[start, start + n)` of a packed window, checked as `slice_rows` checks the row-major views.
fn window(p: Packed<'_>, start: usize, n: usize) -> Packed<'_> {
    assert!(start + n <= p.rows, "rows out of range");
    Packed {
        row0: p.row0 + start,
        rows: n,
        ..p
    }
}
