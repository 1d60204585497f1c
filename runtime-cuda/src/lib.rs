//! The CUDA backend: the CUDA C kernels of `kernels/cuda/*.cu`, compiled to PTX by NVRTC at first use (cached on
//! disk by source hash and GPU architecture), their launchers ([`ops`]), and a forward pass whose weights and KV
//! cache live on the device ([`DeviceModel`]).
//!
//! CUDA is loaded at run time, so this crate builds and links on machines without it; [`Gpu::open`] then
//! fails with one clear line instead of the panic cudarc gives when a library is missing.

pub mod model;
pub mod ops;
mod ptx;

pub use model::{DeviceModel, Sampling};
pub use ptx::{compile, kernel_names, ptx_cached, source, Arch, MAX_BATCH, SOURCES};

use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No driver, no NVRTC, no such GPU, or a GPU too old: why `--device cuda` cannot run here.
    #[error("{0}")]
    Unavailable(String),
    #[error("CUDA {what}: {detail}")]
    Driver { what: &'static str, detail: String },
    #[error("NVRTC could not compile {file} for {arch}: {log}")]
    Compile {
        file: &'static str,
        arch: &'static str,
        log: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Core(#[from] enigma_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn driver(what: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Error {
    move |e| Error::Driver {
        what,
        detail: format!("{e:?}"),
    }
}

/// Whether the CUDA driver library and NVRTC can be loaded, or why not. Checked before any other cudarc call,
/// since cudarc panics when a library is missing.
pub fn libraries() -> Result<()> {
    // SAFETY: only tries to open the shared libraries (running their initialisers, as any CUDA program does).
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Unavailable(
            "--device cuda: no CUDA driver (libcuda) on this machine".into(),
        ));
    }
    // SAFETY: as above, for libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::Unavailable(
            "--device cuda: NVRTC (libnvrtc.so.12) was not found; install the CUDA toolkit or `pip install nvidia-cuda-nvrtc-cu12` and put its lib folder on LD_LIBRARY_PATH".into(),
        ));
    }
    Ok(())
}

/// One GPU: its context, the stream every launch goes to, and every kernel, loaded. Clones share them.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    pub name: String,
    pub arch: Arch,
    pub total_mem: usize,
}

impl Gpu {
    /// Opens GPU `ordinal` and loads every kernel (compiling the ones not in the PTX cache).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        libraries()?;
        // cudarc panics rather than erring on some driver mismatches (a symbol missing from an old driver).
        std::panic::catch_unwind(|| Self::open_checked(ordinal)).unwrap_or_else(|_| {
            Err(Error::Unavailable(
                "--device cuda: the CUDA driver library could not be used".into(),
            ))
        })
    }

    fn open_checked(ordinal: usize) -> Result<Gpu> {
        cudarc::driver::result::init().map_err(driver("init"))?;
        let count = cudarc::driver::result::device::get_count().map_err(driver("device count"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Unavailable(format!(
                "--device cuda:{ordinal}: this machine has {count} CUDA GPU(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("context"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("compute capability"))?;
        let arch = Arch::for_capability(major, minor).ok_or_else(|| {
            Error::Unavailable(format!(
                "--device cuda:{ordinal}: compute capability {major}.{minor}; the kernels need 8.0 (Ampere) or newer (mma.sync on bf16)"
            ))
        })?;
        let name = ctx.name().map_err(driver("device name"))?;
        let total_mem = ctx.total_mem().map_err(driver("memory"))?;
        // A stream of its own: the legacy default stream cannot be captured into a CUDA graph.
        let stream = ctx.new_stream().map_err(driver("stream"))?;
        let mut functions = HashMap::new();
        for (file, _) in SOURCES {
            let ptx = ptx_cached(file, arch)?;
            let module = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                .map_err(driver("loading a module"))?;
            for name in kernel_names(file) {
                let f = module
                    .load_function(name)
                    .map_err(driver("loading a kernel"))?;
                functions.insert(name, f);
            }
        }
        Ok(Gpu {
            stream,
            functions,
            name,
            arch,
            total_mem,
        })
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("no kernel named {name}")))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver("synchronize"))
    }

    pub fn describe(&self) -> String {
        format!(
            "cuda ({}, {}, {} GiB)",
            self.name,
            self.arch.name(),
            self.total_mem >> 30
        )
    }
}
