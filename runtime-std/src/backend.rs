//! Where the forward pass runs, chosen at run time at the edge: model code never names a backend.

use crate::{Error, Result};
use enigma_core::kernels::{kernels_from_env, Kernels};
use enigma_core::{Exec, Serial};
use rayon::prelude::*;

/// A rayon pool that splits rows and heads over `threads` threads.
pub struct Pool {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl Pool {
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("enigma-{i}"))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {threads} threads: {e}")))?;
        Ok(Pool { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Exec for Pool {
    fn split(&self, data: &mut [f32], unit: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let units = data.len() / unit.max(1);
        if units < 2 || self.threads < 2 {
            return f(0, data);
        }
        // Rows of one matrix cost the same, so one even part per thread is enough.
        let per = units.div_ceil(self.threads.min(units));
        self.pool.install(|| {
            data.par_chunks_mut(per * unit)
                .enumerate()
                .for_each(|(i, part)| f(i * per, part))
        });
    }
}

/// The CPU backend, or the stand-in for CUDA in builds without it.
pub enum Backend {
    Cpu {
        kernels: &'static Kernels,
        pool: Option<Pool>,
    },
}

impl Backend {
    /// The CPU with `threads` threads (all cores when `None`), using the kernel tier `ENIGMA_KERNELS` names
    /// or the best this CPU supports.
    pub fn cpu(threads: Option<usize>) -> Result<Self> {
        let kernels = kernels_from_env().map_err(Error::Kernels)?;
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            return Err(Error::Invalid("--threads must be at least 1".into()));
        }
        let pool = if threads > 1 {
            Some(Pool::new(threads)?)
        } else {
            None
        };
        Ok(Backend::Cpu { kernels, pool })
    }

    /// CUDA is not compiled into this build; the error says so instead of a missing symbol or a crash.
    pub fn cuda(_device: usize) -> Result<Self> {
        Err(Error::NoCuda(
            "this build has no CUDA backend (the `cuda` feature is not enabled)",
        ))
    }

    pub fn kernels(&self) -> &'static Kernels {
        match self {
            Backend::Cpu { kernels, .. } => kernels,
        }
    }

    pub fn exec(&self) -> &dyn Exec {
        match self {
            Backend::Cpu { pool: Some(p), .. } => p,
            Backend::Cpu { pool: None, .. } => &Serial,
        }
    }

    pub fn threads(&self) -> usize {
        match self {
            Backend::Cpu { pool, .. } => pool.as_ref().map_or(1, |p| p.threads),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu { kernels, .. } => {
                format!("cpu ({}, {} threads)", kernels.tier.name(), self.threads())
            }
        }
    }
}
