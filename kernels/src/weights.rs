//! The one view of a weight matrix that the forward pass reads through, whatever its storage dtype.

/// Storage types of tensors in a `.enigma` file. The codes are the on-disk values (docs/FORMAT.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q4_0 = 4,
    U8 = 16,
    U32 = 17,
}

impl DType {
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
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
            DType::U8 => "u8",
            DType::U32 => "u32",
        }
    }

    /// Elements per storage block (32 for the block-quantized types, else 1).
    pub fn block_elems(self) -> usize {
        match self {
            DType::Q8_0 | DType::Q4_0 => 32,
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
        }
    }

    /// Bytes that `n` elements take, or `None` when `n` is not a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let b = self.block_elems() as u64;
        if n % b != 0 {
            return None;
        }
        (n / b).checked_mul(self.block_bytes() as u64)
    }
}

/// A read-only weight matrix `(rows, cols)`, row-major, in one of the dtypes the kernels multiply.
///
/// This is the single seam at the matmul boundary: the model holds these and never matches on dtype itself.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    F32 { data: &'a [f32], cols: usize },
}

/// Why bytes could not be viewed as a weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// The kernels have no matvec for this dtype (yet).
    UnsupportedDType(DType),
    /// The byte length is not `rows * cols` elements of the dtype.
    Length,
    /// The bytes do not start at the alignment the dtype's elements need.
    Misaligned,
}

impl<'a> WeightView<'a> {
    /// Views little-endian tensor bytes `(rows, cols)` of `dtype` in place, without copying.
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
        match dtype {
            DType::F32 => {
                let data: &[f32] =
                    bytemuck::try_cast_slice(bytes).map_err(|_| ViewError::Misaligned)?;
                Ok(WeightView::F32 { data, cols })
            }
            other => Err(ViewError::UnsupportedDType(other)),
        }
    }

    pub fn f32(data: &'a [f32], cols: usize) -> Self {
        WeightView::F32 { data, cols }
    }

    pub fn dtype(&self) -> DType {
        match self {
            WeightView::F32 { .. } => DType::F32,
        }
    }

    pub fn cols(&self) -> usize {
        match *self {
            WeightView::F32 { cols, .. } => cols,
        }
    }

    pub fn rows(&self) -> usize {
        match *self {
            WeightView::F32 { data, cols } => data.len().checked_div(cols).unwrap_or(0),
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
        }
    }

    /// Writes row `r` as f32 into `out` `(cols)`: the embedding lookup.
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        match *self {
            WeightView::F32 { data, cols } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
        }
    }
}
