//! One launcher per kernel of `kernels/cuda`. Buffers are passed as raw device addresses ([`Buf`]): every
//! launch goes to the GPU's one stream, in order, so no cross-stream events are needed, and a layer's slice
//! of a stacked weight matrix is an address plus an offset.
//!
//! Each launcher checks the shapes it is given against the buffers' lengths before launching, so a wrong
//! shape is an error here rather than an out-of-bounds read on the device.

use crate::ptx::{matvec_name, MAX_BATCH};
use crate::{driver, Error, Gpu, Result};
use cudarc::driver::{
    CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use enigma_kernels::{DType, WeightView};

/// A device allocation and its address.
pub struct Buf<T> {
    slice: CudaSlice<T>,
    ptr: u64,
    len: usize,
}

impl<T: DeviceRepr + ValidAsZeroBits> Buf<T> {
    pub fn zeros(gpu: &Gpu, len: usize) -> Result<Self> {
        let slice = gpu
            .stream
            .alloc_zeros::<T>(len.max(1))
            .map_err(driver("allocating device memory"))?;
        Ok(Self::wrap(gpu, slice, len))
    }

    pub fn upload(gpu: &Gpu, host: &[T]) -> Result<Self> {
        let mut b = Self::zeros(gpu, host.len())?;
        b.write(gpu, host)?;
        Ok(b)
    }
}

impl<T: DeviceRepr> Buf<T> {
    fn wrap(gpu: &Gpu, slice: CudaSlice<T>, len: usize) -> Self {
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&gpu.stream);
            ptr
        };
        Buf { slice, ptr, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The address of element `i` (which may be the end).
    pub fn at(&self, i: usize) -> u64 {
        debug_assert!(i <= self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    pub fn write(&mut self, gpu: &Gpu, host: &[T]) -> Result<()> {
        if host.len() > self.len {
            return Err(Error::Invalid(format!(
                "{} elements do not fit a device buffer of {}",
                host.len(),
                self.len
            )));
        }
        let mut view = self.slice.slice_mut(..host.len());
        gpu.stream
            .memcpy_htod(host, &mut view)
            .map_err(driver("copy to the device"))
    }

    /// Copies all of `self` into `dst` on the device.
    pub fn copy_to(&self, gpu: &Gpu, dst: &mut Buf<T>) -> Result<()> {
        need("copy", dst.len, self.len)?;
        let mut view = dst.slice.slice_mut(..self.len);
        gpu.stream
            .memcpy_dtod(&self.slice.slice(..self.len), &mut view)
            .map_err(driver("copy on the device"))
    }

    pub fn read(&self, gpu: &Gpu, n: usize) -> Result<Vec<T>> {
        let view = self.slice.slice(..n.min(self.len));
        gpu.stream
            .clone_dtoh(&view)
            .map_err(driver("copy from the device"))
    }
}

/// Launches kernel `$name` with `$cfg` and the arguments in order (device addresses as `u64`, `i32`, `f32`).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $gpu.function($name)?;
        let mut b = $gpu.stream.launch_builder(f);
        $( let a = $arg; b.arg(&a); )*
        // SAFETY: the argument list matches the kernel's parameters in `kernels/cuda` (addresses as u64,
        // `int` as i32, `float` as f32), and the caller checked every buffer covers what the shapes address.
        unsafe { b.launch($cfg) }.map_err(driver($name))?;
    }};
}

fn cfg(grid: (usize, usize), block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0.max(1) as u32, grid.1.max(1) as u32, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(v: usize) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Invalid(format!("{v} does not fit the kernels' 32-bit sizes")))
}

fn need(what: &str, have: usize, want: usize) -> Result<()> {
    if have < want {
        return Err(Error::Invalid(format!(
            "{what}: a device buffer of {have} elements, {want} needed"
        )));
    }
    Ok(())
}

/// A weight matrix `(rows, cols)` on the device. Quantized blocks are split on upload: their int8 (q8_0) or
/// nibble (q4_0) bytes in `data`, row after row, and their f16 scales in `scales (rows, cols / 32)`, so
/// the kernels read 16-byte-aligned weights with 128-bit loads.
pub struct DeviceMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    data: Buf<u8>,
    scales: Option<Buf<u16>>,
}

impl DeviceMatrix {
    pub fn upload(gpu: &Gpu, w: WeightView<'_>) -> Result<Self> {
        let (rows, cols) = (w.rows(), w.cols());
        let (dtype, data, scales): (DType, Vec<u8>, Option<Vec<u16>>) = match w {
            WeightView::F32 { data, .. } => (DType::F32, bytemuck::cast_slice(data).to_vec(), None),
            WeightView::F16 { data, .. } => (DType::F16, bytemuck::cast_slice(data).to_vec(), None),
            WeightView::BF16 { data, .. } => (DType::BF16, bytemuck::cast_slice(data).to_vec(), None),
            WeightView::Q8_0 { blocks, .. } => (
                DType::Q8_0,
                blocks.iter().flat_map(|b| b.qs.map(|q| q as u8)).collect(),
                Some(blocks.iter().map(|b| b.d).collect()),
            ),
            WeightView::Q4_0 { blocks, .. } => (
                DType::Q4_0,
                blocks.iter().flat_map(|b| b.qs).collect(),
                Some(blocks.iter().map(|b| b.d).collect()),
            ),
            _ => {
                return Err(Error::Invalid(format!(
                    "{} weights have no CUDA kernels; upload the file's own views, before CPU repacking",
                    w.dtype().name()
                )))
            }
        };
        Ok(DeviceMatrix {
            dtype,
            rows,
            cols,
            data: Buf::upload(gpu, &data)?,
            scales: scales.map(|s| Buf::upload(gpu, &s)).transpose()?,
        })
    }

    fn dtype_index(&self) -> usize {
        match self.dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::Q8_0 => 3,
            _ => 4,
        }
    }

    fn quantized(&self) -> bool {
        matches!(self.dtype, DType::Q8_0 | DType::Q4_0)
    }

    /// Bytes of one row in `data`.
    fn row_bytes(&self) -> usize {
        match self.dtype {
            DType::F32 => self.cols * 4,
            DType::F16 | DType::BF16 => self.cols * 2,
            DType::Q8_0 => self.cols,
            _ => self.cols / 2,
        }
    }

    /// Addresses of row `r`'s weights and (quantized) scales.
    fn row(&self, r: usize) -> (u64, u64) {
        let scales = self
            .scales
            .as_ref()
            .map_or(0, |s| s.at(r * (self.cols / 32)));
        (self.data.at(r * self.row_bytes()), scales)
    }

    /// Bytes a full read of the matrix moves (the decode bandwidth bound counts these).
    pub fn bytes(&self) -> usize {
        self.data.len() + self.scales.as_ref().map_or(0, |s| s.len() * 2)
    }
}

/// Activations quantized for the int8 products: `qs (rows, cols)` and `d (rows, cols / 32)`.
pub struct QuantScratch {
    pub qs: Buf<i8>,
    pub d: Buf<f32>,
}

impl QuantScratch {
    pub fn new(gpu: &Gpu, elems: usize) -> Result<Self> {
        Ok(QuantScratch {
            qs: Buf::zeros(gpu, elems)?,
            d: Buf::zeros(gpu, elems.div_ceil(32))?,
        })
    }
}

/// Reference: enigma_kernels::quantize_q8_0. `x (elems)` at `x` into `q`; `elems` a multiple of 32.
pub fn quantize_q8(gpu: &Gpu, q: &QuantScratch, x: u64, elems: usize) -> Result<()> {
    need("quantize_q8", q.qs.len(), elems)?;
    let blocks = elems / 32;
    launch!(
        gpu,
        "quantize_q8",
        cfg((blocks.div_ceil(8), 1), 256),
        x,
        q.qs.at(0),
        q.d.at(0),
        int(blocks)?
    );
    Ok(())
}

/// `out (t, n) (+)= x (t, w.cols) · w[r0..r0 + n]ᵀ`: the decode matvec for up to 8 rows at a time (weights read
/// once per 8 rows), the tensor-core GEMM for longer chunks (f16/bf16 on f16/bf16 `mma`, q8_0/q4_0 on int8
/// `mma` over quantized x). `x` and `out` are addresses of f32 rows; the caller sized them for `t` rows. `q`
/// holds the quantized activations: `t * cols` of them for a quantized GEMM, `8 * cols` otherwise.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    gpu: &Gpu,
    out: u64,
    w: &DeviceMatrix,
    r0: usize,
    n: usize,
    x: u64,
    t: usize,
    accumulate: bool,
    q: &QuantScratch,
) -> Result<()> {
    if r0 + n > w.rows {
        return Err(Error::Invalid(format!(
            "rows {r0}..{} of a matrix of {}",
            r0 + n,
            w.rows
        )));
    }
    let d = w.cols;
    let (wp, sp) = w.row(r0);
    let acc = i32::from(accumulate);
    if t > MAX_BATCH && w.dtype != DType::F32 {
        let name = ["", "gemm_f16", "gemm_bf16", "gemm_q8_0", "gemm_q4_0"][w.dtype_index()];
        let grid = cfg((n.div_ceil(64), t.div_ceil(64)), 128);
        if w.quantized() {
            // The int8 tensor-core GEMM takes x quantized to q8_0 blocks, as the CPU's int8 GEMM does.
            quantize_q8(gpu, q, x, t * d)?;
            launch!(
                gpu,
                name,
                grid,
                out,
                wp,
                sp,
                q.qs.at(0),
                q.d.at(0),
                int(t)?,
                int(n)?,
                int(d)?,
                acc
            );
        } else {
            launch!(gpu, name, grid, out, wp, x, int(t)?, int(n)?, int(d)?, acc);
        }
        return Ok(());
    }
    // f32 weights (small llama2.c models) have no tensor-core path: 8 rows at a time through the matvec.
    for t0 in (0..t).step_by(MAX_BATCH) {
        let rows = MAX_BATCH.min(t - t0);
        let name = matvec_name(w.dtype_index(), rows, false);
        let (xr, or) = (x + (t0 * d * 4) as u64, out + (t0 * n * 4) as u64);
        let grid = cfg((n.div_ceil(4), 1), 128);
        if w.quantized() {
            quantize_q8(gpu, q, xr, rows * d)?;
            launch!(
                gpu,
                name,
                grid,
                or,
                wp,
                sp,
                q.qs.at(0),
                q.d.at(0),
                int(n)?,
                int(d)?,
                acc
            );
        } else {
            launch!(gpu, name, grid, or, wp, xr, int(n)?, int(d)?, acc);
        }
    }
    Ok(())
}

/// The SwiGLU hidden layer `out (t, n) = silu(x · w1[r0..r0 + n]ᵀ) * (x · w3[r0..r0 + n]ᵀ)`: for up to 8 rows
/// one fused kernel reads both matrices' rows and writes only the product; longer chunks take the two GEMMs
/// (the up product into `tmp (t, n)`) and `silu_mul`.
#[allow(clippy::too_many_arguments)]
pub fn swiglu(
    gpu: &Gpu,
    out: u64,
    tmp: u64,
    (w1, w3): (&DeviceMatrix, &DeviceMatrix),
    r0: usize,
    n: usize,
    x: u64,
    t: usize,
    q: &QuantScratch,
) -> Result<()> {
    if w1.dtype != w3.dtype || w1.cols != w3.cols || r0 + n > w1.rows.min(w3.rows) {
        return Err(Error::Invalid(
            "the gate and up matrices differ in type or shape".into(),
        ));
    }
    if t > MAX_BATCH {
        linear(gpu, out, w1, r0, n, x, t, false, q)?;
        linear(gpu, tmp, w3, r0, n, x, t, false, q)?;
        return silu_mul(gpu, out, tmp, t * n);
    }
    let d = w1.cols;
    let ((p1, s1), (p3, s3)) = (w1.row(r0), w3.row(r0));
    let name = matvec_name(w1.dtype_index(), t, true);
    let grid = cfg((n.div_ceil(4), 1), 128);
    if w1.quantized() {
        quantize_q8(gpu, q, x, t * d)?;
        let (xq, xd) = (q.qs.at(0), q.d.at(0));
        launch!(
            gpu,
            name,
            grid,
            out,
            p1,
            s1,
            p3,
            s3,
            xq,
            xd,
            int(n)?,
            int(d)?
        );
    } else {
        launch!(gpu, name, grid, out, p1, p3, x, int(n)?, int(d)?);
    }
    Ok(())
}

/// Reference: enigma_kernels::generic::rmsnorm, on each of `rows` rows of `d`.
pub fn rmsnorm(
    gpu: &Gpu,
    out: u64,
    x: u64,
    weight: u64,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    launch!(
        gpu,
        "rmsnorm",
        cfg((rows, 1), 256),
        out,
        x,
        weight,
        int(d)?,
        eps
    );
    Ok(())
}

/// Reference: enigma_kernels::generic::rope_table + rope: `q (rows, nh, hs)` and `k (rows, nkv, hs)` rotated by
/// each row's position `pos (rows)` (i32 on the device).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    q: u64,
    k: u64,
    pos: u64,
    rows: usize,
    nh: usize,
    nkv: usize,
    hs: usize,
    theta: f32,
) -> Result<()> {
    launch!(
        gpu,
        "rope",
        cfg((rows, 1), 128),
        q,
        k,
        pos,
        int(nh)?,
        int(nkv)?,
        int(hs)?,
        theta
    );
    Ok(())
}

/// Reference: enigma_kernels::generic::silu_mul over `n` elements.
pub fn silu_mul(gpu: &Gpu, a: u64, b: u64, n: usize) -> Result<()> {
    launch!(
        gpu,
        "silu_mul",
        cfg((n.div_ceil(256), 1), 256),
        a,
        b,
        int(n)?
    );
    Ok(())
}

/// Reference: enigma_kernels::generic::add over `n` elements.
pub fn add(gpu: &Gpu, acc: u64, x: u64, n: usize) -> Result<()> {
    launch!(gpu, "add", cfg((n.div_ceil(256), 1), 256), acc, x, int(n)?);
    Ok(())
}

/// Reference: WeightView::row_to_f32. `out (rows, cols)` = the table's rows `tokens (rows)` (i32, checked
/// against the vocabulary by the caller).
pub fn embed(gpu: &Gpu, out: u64, table: &DeviceMatrix, tokens: u64, rows: usize) -> Result<()> {
    let name = [
        "embed_f32",
        "embed_f16",
        "embed_bf16",
        "embed_q8_0",
        "embed_q4_0",
    ][table.dtype_index()];
    let (wp, sp) = table.row(0);
    let grid = cfg((rows, 1), 256);
    if table.quantized() {
        launch!(gpu, name, grid, out, wp, sp, tokens, int(table.cols)?);
    } else {
        launch!(gpu, name, grid, out, wp, tokens, int(table.cols)?);
    }
    Ok(())
}

/// The shape of a device KV cache: enigma_core's paged layout, `(blocks, L, NKV, BLK, HS)` for keys and again
/// for values; `f16` when its elements are f16.
#[derive(Clone, Copy, Debug)]
pub struct KvShape {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_size: usize,
    pub block: usize,
    pub blocks: usize,
    pub f16: bool,
}

impl KvShape {
    pub fn elems(&self) -> usize {
        self.blocks * self.layers * self.kv_heads * self.block * self.head_size
    }
}

/// Where a step's rows sit: `pos (rows)` and `tables (rows, tb)` (i32 on the device), block ids below
/// `KvShape::blocks` and tables long enough for each position (checked by the caller on the host).
#[derive(Clone, Copy, Debug)]
pub struct Rows {
    pub rows: usize,
    pub pos: u64,
    pub tables: u64,
    pub tb: usize,
}

/// Reference: KvCache::store. Keys and values `(rows, NKV * HS)` into layer `layer` of the cache.
#[allow(clippy::too_many_arguments)]
pub fn kv_store(
    gpu: &Gpu,
    kc: u64,
    vc: u64,
    k: u64,
    v: u64,
    r: Rows,
    layer: usize,
    s: KvShape,
) -> Result<()> {
    let name = if s.f16 {
        "kv_store_f16"
    } else {
        "kv_store_f32"
    };
    launch!(
        gpu,
        name,
        cfg((r.rows, 1), 128),
        kc,
        vc,
        k,
        v,
        r.pos,
        r.tables,
        int(r.tb)?,
        int(layer)?,
        int(s.layers)?,
        int(s.kv_heads)?,
        int(s.head_size)?,
        int(s.block)?
    );
    Ok(())
}

/// What both attention kernels can run: heads of at most 256, query heads a multiple of the KV heads.
fn attention_shape(nh: usize, s: KvShape) -> Result<()> {
    if s.head_size > 256 || s.kv_heads == 0 || !nh.is_multiple_of(s.kv_heads) {
        return Err(Error::Invalid(format!(
            "attention: head size {} (at most 256), {nh} heads over {} KV heads",
            s.head_size, s.kv_heads
        )));
    }
    Ok(())
}

/// Reference: enigma_core's `KvView::attend`: `out (rows, nh, hs)` from `q (rows, nh, hs)` over each row's
/// positions `0..=pos`, causal, with an online softmax.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    gpu: &Gpu,
    out: u64,
    q: u64,
    kc: u64,
    vc: u64,
    r: Rows,
    layer: usize,
    nh: usize,
    s: KvShape,
    scale: f32,
) -> Result<()> {
    attention_shape(nh, s)?;
    let name = if s.f16 {
        "attention_f16"
    } else {
        "attention_f32"
    };
    launch!(
        gpu,
        name,
        cfg((nh, r.rows), 128),
        out,
        q,
        kc,
        vc,
        r.pos,
        r.tables,
        int(r.tb)?,
        int(layer)?,
        int(s.layers)?,
        int(nh)?,
        int(s.kv_heads)?,
        int(s.head_size)?,
        int(s.block)?,
        scale
    );
    Ok(())
}

/// [`attention`] for a prompt chunk: `r.rows` consecutive positions of one sequence (every row's table is
/// that sequence's), tiled flash-style so each block reads the cached keys and values once for 16 rows.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    gpu: &Gpu,
    out: u64,
    q: u64,
    kc: u64,
    vc: u64,
    r: Rows,
    layer: usize,
    nh: usize,
    s: KvShape,
    scale: f32,
) -> Result<()> {
    attention_shape(nh, s)?;
    let name = if s.f16 {
        "attention_prefill_f16"
    } else {
        "attention_prefill_f32"
    };
    launch!(
        gpu,
        name,
        cfg((nh, r.rows.div_ceil(16)), 128),
        out,
        q,
        kc,
        vc,
        r.pos,
        r.tables,
        int(r.tb)?,
        int(layer)?,
        int(s.layers)?,
        int(nh)?,
        int(s.kv_heads)?,
        int(s.head_size)?,
        int(s.block)?,
        scale,
        int(r.rows)?
    );
    Ok(())
}

/// Reference: enigma_core::sampler::argmax, per row of `logits (rows, v)`, into `out (rows)` (i32).
pub fn argmax(gpu: &Gpu, out: u64, logits: u64, rows: usize, v: usize) -> Result<()> {
    launch!(gpu, "argmax", cfg((rows, 1), 1024), out, logits, int(v)?);
    Ok(())
}

/// Reference: Sampler::sample with temperature and top-p (see sample.cu for how the walk differs); `probs`
/// is scratch of `rows * v`, `coins (rows)` in [0, 1).
#[allow(clippy::too_many_arguments)]
pub fn sample_top_p(
    gpu: &Gpu,
    out: u64,
    logits: u64,
    probs: u64,
    rows: usize,
    v: usize,
    temperature: f32,
    top_p: f32,
    coins: u64,
) -> Result<()> {
    launch!(
        gpu,
        "sample_top_p",
        cfg((rows, 1), 1024),
        out,
        logits,
        probs,
        int(v)?,
        temperature,
        top_p,
        coins
    );
    Ok(())
}
