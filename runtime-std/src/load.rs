//! Loading `.enigma` files: mmap on a host (zero-copy, pages shared between processes), or an aligned copy.

use crate::{Error, Result};
use enigma_core::{kernels::Kernels, EnigmaFile, Tokenizer, Transformer};
use std::ops::Deref;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

/// Bytes that start on a 64-byte boundary, as the `.enigma` reader needs.
pub struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBytes {
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut blocks = vec![Block([0; 64]); bytes.len().div_ceil(64)];
        for (b, src) in blocks.iter_mut().zip(bytes.chunks(64)) {
            b.0[..src.len()].copy_from_slice(src);
        }
        AlignedBytes {
            blocks,
            len: bytes.len(),
        }
    }
}

impl Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let all: &[[u8; 64]] = bytemuck_blocks(&self.blocks);
        &all.as_flattened()[..self.len]
    }
}

fn bytemuck_blocks(b: &[Block]) -> &[[u8; 64]] {
    // SAFETY: `Block` is `repr(C)` around `[u8; 64]` with no padding (size 64, align 64), so a slice of
    // blocks is a slice of byte arrays of the same length.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<[u8; 64]>(), b.len()) }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(AlignedBytes),
}

/// A validated `.enigma` file held in memory (mapped or copied).
pub struct ModelFile {
    storage: Storage,
    path: PathBuf,
}

impl ModelFile {
    /// Maps `path`, validates its structure and verifies the data checksum.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        let storage = if len == 0 {
            // An empty map is an OS error on some systems; let the reader say what is wrong instead.
            Storage::Owned(AlignedBytes::copy_from(&[]))
        } else {
            // SAFETY: the map is read-only. Another process truncating the file while it is mapped would be
            // undefined behaviour; the model folder lock (one writer per model) is what prevents that.
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?)
        };
        Self::validated(storage, path.to_path_buf())
    }

    /// Copies `bytes` into an aligned buffer and validates them; `name` labels errors.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<Self> {
        Self::validated(Storage::Owned(AlignedBytes::copy_from(bytes)), name.into())
    }

    fn validated(storage: Storage, path: PathBuf) -> Result<Self> {
        let f = ModelFile { storage, path };
        f.parse()?.verify_checksum().map_err(|e| f.err(e))?;
        Ok(f)
    }

    fn err(&self, source: enigma_core::Error) -> Error {
        Error::Model {
            path: self.path.clone(),
            source,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Mmap(m) => m,
            Storage::Owned(b) => b,
        }
    }

    pub fn parse(&self) -> Result<EnigmaFile<'_>> {
        EnigmaFile::parse(self.bytes()).map_err(|e| self.err(e))
    }

    /// The model and tokenizer, viewing the file in place.
    pub fn model(&self, kernels: &'static Kernels) -> Result<Model<'_>> {
        let file = self.parse()?;
        let transformer = Transformer::from_file(&file, kernels).map_err(|e| self.err(e))?;
        let tokenizer = Tokenizer::from_file(&file).map_err(|e| self.err(e))?;
        Ok(Model {
            file,
            transformer,
            tokenizer,
        })
    }
}

/// Everything needed to run a model, borrowed from a [`ModelFile`].
pub struct Model<'a> {
    pub file: EnigmaFile<'a>,
    pub transformer: Transformer<'a>,
    pub tokenizer: Tokenizer<'a>,
}
