//! Loading `.enigma` files: on Linux a copy into transparent huge pages, elsewhere (or with `ENIGMA_MMAP=1`,
//! or when the file would not fit in half the available memory) mmap (zero-copy, pages shared between
//! processes), or an aligned copy of bytes already in memory.
//!
//! Why copy: decode reads every weight once per token, and with 4 KiB pages the TLB misses of that stream
//! cost a lot. Measured on this 2-core Zen 4 (`enigma bench`, 110M q8_0, 1 thread, medians of 5 alternating
//! runs, twice): 146 -> 165 and 121 -> 157 tok/s. Loading the 117 MB file then costs one read.

use crate::lock::{self, ModelLock};
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
    /// `len` zero bytes; the allocator hands zeroed pages out without touching them.
    pub fn zeroed(len: usize) -> Self {
        AlignedBytes {
            blocks: vec![Block([0; 64]); len.div_ceil(64)],
            len,
        }
    }

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

impl std::ops::DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        // SAFETY: as in `bytemuck_blocks`, for the unique borrow.
        let all: &mut [[u8; 64]] = unsafe {
            std::slice::from_raw_parts_mut(
                self.blocks.as_mut_ptr().cast::<[u8; 64]>(),
                self.blocks.len(),
            )
        };
        &mut all.as_flattened_mut()[..len]
    }
}

fn bytemuck_blocks(b: &[Block]) -> &[[u8; 64]] {
    // SAFETY: `Block` is `repr(C)` around `[u8; 64]` with no padding (size 64, align 64), so a slice of
    // blocks is a slice of byte arrays of the same length.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<[u8; 64]>(), b.len()) }
}

/// An anonymous read-write mapping of `len` bytes, backed by transparent huge pages where the OS offers them
/// (Linux's `madvise(MADV_HUGEPAGE)`; elsewhere ordinary pages). Also used by `enigma bench` so that its
/// bandwidth probe reads memory the way the weights are read.
pub fn huge_buffer(len: usize) -> std::io::Result<memmap2::MmapMut> {
    let m = memmap2::MmapOptions::new().len(len.max(1)).map_anon()?;
    #[cfg(target_os = "linux")]
    {
        // Only a hint: without THP the mapping still works with small pages.
        let _ = m.advise(memmap2::Advice::HugePage);
    }
    Ok(m)
}

/// The file read into [`huge_buffer`] memory (Linux only), unless `ENIGMA_MMAP=1` asks for a mapping or the
/// file would take more than half the available memory. `None` means: map it instead (also on any error).
fn huge_copy(file: &std::fs::File, len: u64) -> Option<memmap2::Mmap> {
    use std::io::Read;
    if !cfg!(target_os = "linux") || std::env::var("ENIGMA_MMAP").is_ok_and(|v| v == "1") {
        return None;
    }
    let (_, free) = crate::hardware::ram();
    if free.is_none_or(|f| len > f / 2) {
        return None;
    }
    let mut m = huge_buffer(usize::try_from(len).ok()?).ok()?;
    let mut f = file;
    f.read_exact(&mut m).ok()?;
    m.make_read_only().ok()
}

/// Refuses anything but a regular file (a FIFO, a device, a folder) before it is opened: opening a FIFO
/// for reading blocks until a writer comes, and a device can be read forever.
pub fn ensure_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(Error::io(path))?;
    if meta.is_file() {
        Ok(())
    } else {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("is {kind}")),
        })
    }
}

/// Reads a whole input file, refusing what is not a regular file first ([`ensure_regular_file`]).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    ensure_regular_file(path)?;
    std::fs::read(path).map_err(Error::io(path))
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(AlignedBytes),
}

/// A validated `.enigma` file held in memory (mapped or copied).
pub struct ModelFile {
    storage: Storage,
    path: PathBuf,
    /// Packed copies of the quantized matrices, made by the first [`ModelFile::model`] call.
    packed: std::sync::OnceLock<crate::packed::PackedWeights>,
    /// The folder's reader lock, when opened with [`ModelFile::open_shared`]. Declared after the storage so
    /// the mapping is gone before the lock is released.
    _lock: Option<ModelLock>,
}

impl ModelFile {
    /// Maps `path`, validates its structure and verifies the data checksum.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        ensure_regular_file(path)?;
        let file = std::fs::File::open(path).map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        let storage = if len == 0 {
            // An empty map is an OS error on some systems; let the reader say what is wrong instead.
            Storage::Owned(AlignedBytes::copy_from(&[]))
        } else if let Some(m) = huge_copy(&file, len) {
            Storage::Mmap(m)
        } else {
            // SAFETY: the map is read-only. Another process truncating the file while it is mapped would be
            // undefined behaviour; the model folder lock (one writer per model) is what prevents that.
            Storage::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?)
        };
        Self::validated(storage, path.to_path_buf())
    }

    /// [`ModelFile::open`] under the reader's lock of the model's folder ([`lock::reader_lock_for`]), held
    /// for as long as the returned file lives: a model that runs is never converted, renamed or deleted
    /// meanwhile, nor truncated under its mapping by one of our own writers.
    pub fn open_shared(path: impl AsRef<Path>, purpose: &str) -> Result<Self> {
        let path = path.as_ref();
        let lock = lock::reader_lock_for(path, purpose)?;
        let mut file = Self::open(path)?;
        file._lock = lock;
        Ok(file)
    }

    /// Copies `bytes` into an aligned buffer and validates them; `name` labels errors.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<Self> {
        Self::validated(Storage::Owned(AlignedBytes::copy_from(bytes)), name.into())
    }

    /// A model assembled in memory ([`crate::ModelWriter::to_model`]), validated like a file.
    pub(crate) fn from_aligned(bytes: AlignedBytes, path: PathBuf) -> Result<Self> {
        Self::validated(Storage::Owned(bytes), path)
    }

    fn validated(storage: Storage, path: PathBuf) -> Result<Self> {
        let f = ModelFile {
            storage,
            path,
            packed: std::sync::OnceLock::new(),
            _lock: None,
        };
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

    /// The model and tokenizer, viewing the file in place, with its quantized matrices repacked for the int8
    /// GEMM where `kernels` has micro-kernels for them (`packed.rs`; the first call packs).
    pub fn model(&self, kernels: &'static Kernels) -> Result<Model<'_>> {
        let file = self.parse()?;
        if enigma_core::encoder::is_encoder(&file) {
            return Err(Error::Invalid(format!(
                "{} is a sentence-embedding (encoder) model, not a text generator: use `enigma embed`",
                self.path.display()
            )));
        }
        let mut transformer = Transformer::from_file(&file, kernels).map_err(|e| self.err(e))?;
        let packed = self
            .packed
            .get_or_init(|| crate::packed::pack(&transformer.weights, kernels));
        crate::packed::view(&mut transformer.weights, packed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The huge-page copy holds the file's bytes exactly (odd length, not a page multiple).
    #[test]
    fn huge_copy_equals_the_file() {
        let bytes: Vec<u8> = (0..3_000_017u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let file = std::fs::File::open(f.path()).unwrap();
        match huge_copy(&file, bytes.len() as u64) {
            Some(m) => assert_eq!(&m[..], &bytes[..]),
            None => assert!(!cfg!(target_os = "linux") || crate::hardware::ram().1.is_none()),
        }
        let b = huge_buffer(5).unwrap();
        assert_eq!(b.len(), 5);
    }
}
