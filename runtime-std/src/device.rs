//! The CUDA backend as the rest of the engine sees it: the same names with or without the `cuda` feature
//! (candle's dummy-backend idea). Without it, [`Gpu`] and [`Runner`] are uninhabited: [`crate::Backend::cuda`]
//! has already said "built without CUDA", so no value of them can exist and no caller needs `cfg`.

use crate::{Error, Result};
use enigma_core::config::KvType;
use enigma_core::sampler::Sampler;
use enigma_core::EnigmaFile;

#[cfg(feature = "cuda")]
pub use enigma_cuda::Gpu;

/// Rows one batched decode step takes ([`Runner::decode_batch`]).
#[cfg(feature = "cuda")]
pub const MAX_ROWS: usize = enigma_cuda::MAX_BATCH;
#[cfg(not(feature = "cuda"))]
pub const MAX_ROWS: usize = 8;

/// Whether this build has the CUDA backend.
pub const COMPILED: bool = cfg!(feature = "cuda");

#[cfg(not(feature = "cuda"))]
/// A GPU; there are none in a build without CUDA.
pub enum Gpu {}

/// A model on a GPU: weights uploaded once, its KV cache on the device (`slots` sequences).
pub struct Runner {
    #[cfg(feature = "cuda")]
    model: enigma_cuda::DeviceModel,
    #[cfg(not(feature = "cuda"))]
    never: Gpu,
}

#[cfg(feature = "cuda")]
fn err(e: enigma_cuda::Error) -> Error {
    Error::Cuda(e.to_string())
}

#[cfg(feature = "cuda")]
pub(crate) fn open(device: usize) -> Result<Gpu> {
    Gpu::open(device).map_err(err)
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn open(_device: usize) -> Result<Gpu> {
    Err(Error::NoCuda("--device cuda: built without CUDA"))
}

pub fn describe(gpu: &Gpu) -> String {
    #[cfg(feature = "cuda")]
    return gpu.describe();
    #[cfg(not(feature = "cuda"))]
    match *gpu {}
}

/// Device-to-device copy bandwidth in bytes per second (each byte read and written counts twice), the
/// denominator of the decode bandwidth bound `enigma bench --device cuda` prints.
pub fn copy_bandwidth(gpu: &Gpu) -> Result<f64> {
    #[cfg(feature = "cuda")]
    return enigma_cuda::model::copy_bandwidth(gpu).map_err(err);
    #[cfg(not(feature = "cuda"))]
    match *gpu {}
}

impl Runner {
    /// Uploads `file`'s weights (its own views, not the CPU's repacked copies) with the context cut to `ctx`.
    pub fn load(
        gpu: &Gpu,
        file: &EnigmaFile<'_>,
        kv: KvType,
        ctx: usize,
        slots: usize,
    ) -> Result<Runner> {
        #[cfg(feature = "cuda")]
        {
            let weights = enigma_core::Weights::from_file(file)?;
            let mut config = *file.config();
            config.seq_len = config
                .seq_len
                .min(u32::try_from(ctx.max(1)).unwrap_or(u32::MAX));
            let model = enigma_cuda::DeviceModel::new(gpu.clone(), config, &weights, kv, slots)
                .map_err(err)?;
            Ok(Runner { model })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (file, kv, ctx, slots);
            match *gpu {}
        }
    }

    /// See `enigma_cuda::DeviceModel::generate`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        sampler: &mut Sampler,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        #[cfg(feature = "cuda")]
        return self
            .model
            .generate(prompt, max_new, sampler, on_token)
            .map_err(err);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (prompt, max_new, sampler, on_token);
            match self.never {}
        }
    }

    /// Runs `tokens` of sequence 0 from `start`; the last one's logits stay on the device.
    pub fn forward(&mut self, tokens: &[u32], start: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.model.forward(tokens, start).map_err(err);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (tokens, start);
            match self.never {}
        }
    }

    /// Runs `tokens` of sequence 0 from `start`, handing every position's logits to `on_logits`.
    pub fn forward_each(
        &mut self,
        tokens: &[u32],
        start: usize,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self
            .model
            .forward_each(tokens, start, on_logits)
            .map_err(err);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (tokens, start, on_logits);
            match self.never {}
        }
    }

    /// One decode step of up to 8 `(token, position, slot)` rows.
    pub fn decode_batch(&mut self, rows: &[(u32, usize, usize)]) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.model.decode_batch(rows).map_err(err);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = rows;
            match self.never {}
        }
    }

    /// The greedy next token of each of the last `rows` rows classified (argmax on the device).
    pub fn greedy(&mut self, rows: usize) -> Result<Vec<u32>> {
        #[cfg(feature = "cuda")]
        return self
            .model
            .sample(enigma_cuda::Sampling::Greedy, &vec![0.0; rows])
            .map_err(err);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = rows;
            match self.never {}
        }
    }

    /// Weight bytes one decode step reads.
    pub fn weight_bytes_per_token(&self) -> usize {
        #[cfg(feature = "cuda")]
        return self.model.weight_bytes_per_token();
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }

    /// How decode steps are launched (a CUDA graph per step, or plain launches and why).
    pub fn launches(&self) -> String {
        #[cfg(feature = "cuda")]
        return self.model.launches();
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }

    /// Waits for the device to finish what was launched (timing).
    pub fn synchronize(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.model.gpu().synchronize().map_err(err);
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }
}
