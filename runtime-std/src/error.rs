use std::path::PathBuf;

/// Errors of the std runtime. Each prints as one line naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Model {
        path: PathBuf,
        source: enigma_core::Error,
    },
    #[error(transparent)]
    Core(#[from] enigma_core::Error),
    #[error("ENIGMA_KERNELS: {0}")]
    Kernels(enigma_kernels::TierError),
    #[error("{0}")]
    NoCuda(&'static str),
    /// `--device cuda` cannot run here (no driver, no such GPU), or the GPU failed.
    #[error("{0}")]
    Cuda(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
