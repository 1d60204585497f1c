//! The checks behind Enigma Engine's fuzz targets, one module per parser of outside bytes. Each `check` feeds
//! its input to the real parser through the crates' public API and asserts what must hold for any input:
//! no panic, no hang (libFuzzer's `-timeout`), bounded allocation ([`CappedAlloc`]), and for inputs that
//! parse, the properties that the rest of the engine relies on (round trips, ids inside the vocabulary,
//! the manager's rules).
//!
//! No input is stepped around: the findings of issue 12 are fixed, and the inputs that once reached them are
//! seeds named `regress-*` (in `seeds/<target>/`, or made by `seed.sh`), so every run replays them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod enigma_file;
pub mod gguf;
pub mod llama2c_checkpoint;
pub mod llama2c_tokenizer;
pub mod modules_json;
pub mod safetensors;
pub mod sampler;
pub mod tokenizer_json;
pub mod train_data;

/// The largest single allocation an input may cause.
pub const MAX_ALLOC: usize = 512 << 20;
/// The most bytes that may be live at once.
pub const MAX_LIVE: usize = 2 << 30;

/// The system allocator with a cap on each allocation and on the live total. libFuzzer's own
/// `-malloc_limit_mb` needs a sanitizer's malloc hooks, which a `--sanitizer none` build (the one that runs
/// on the stable toolchain) does not have; this makes "bounded allocation" hold in every build. Past a cap
/// the allocation fails, so Rust aborts with `memory allocation of N bytes failed` and libFuzzer records
/// the input as a crash.
pub struct CappedAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

impl CappedAlloc {
    /// Reserves `size` bytes of the live budget; false when the input has gone past a cap.
    fn reserve(size: usize) -> bool {
        if size > MAX_ALLOC {
            return false;
        }
        let before = LIVE.fetch_add(size, Ordering::Relaxed);
        if before + size > MAX_LIVE {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

// SAFETY: every call is forwarded to `System` with the caller's layout, or refused with null (which the
// `GlobalAlloc` contract allows) before `System` sees it; the counter is only bookkeeping.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's (non-zero-sized, per the contract) layout.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (we never hand out anything else).
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// A per-process file for parsers that take a path; in /dev/shm where it exists, so the write costs no disk.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("enigma-fuzz-{}", std::process::id()));
        // The harness cannot go on without its scratch folder: panicking here is the right failure.
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    });
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("scratch file");
    path
}

/// A short text built from the input, for the encoders to chew on besides the fixed samples.
pub fn text_of(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

/// Little-endian readers over a byte cursor, returning zeros past the end (so every input is some value).
pub struct Bytes<'a> {
    pub rest: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(rest: &'a [u8]) -> Self {
        Bytes { rest }
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let t = self.take(4);
        b[..t.len()].copy_from_slice(t);
        u32::from_le_bytes(b)
    }
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let t = self.take(8);
        b[..t.len()].copy_from_slice(t);
        u64::from_le_bytes(b)
    }
    pub fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
}
