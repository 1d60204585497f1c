//! The GGUF container: a zero-copy parser over the bytes of one file (an mmap), and the opening of split
//! models (`NAME-0000N-of-0000M.gguf`).
//!
//! Layout, little-endian (versions 2 and 3; version 1 has u32 where `len` below is u64):
//!
//! ```text
//! "GGUF" version:u32 n_tensors:len n_kv:len
//! n_kv x     key:string value_type:u32 value
//! n_tensors x name:string n_dims:u32 dims:len[n_dims] ggml_type:u32 offset:u64
//! padding to `general.alignment` (default 32), then the data; each offset is relative to its start
//! string = len bytes (not always UTF-8); array = elem_type:u32 count:len elements
//! ```
//!
//! Every count, length, offset and size is checked against the bytes that are really there before it is
//! used, with checked arithmetic, and nothing is allocated from a count the file states: values borrow the
//! file, arrays are iterated in place, and the tensor table grows one entry per entry actually parsed.

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays of arrays are legal; deeper than this is only an attack on the stack.
const MAX_DEPTH: u32 = 8;
const MAX_DIMS: usize = 4;

/// GGUF's metadata value types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    Str = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<ValueType> {
        use ValueType::*;
        [
            U8, I8, U16, I16, U32, I32, F32, Bool, Str, Array, U64, I64, F64,
        ]
        .into_iter()
        .find(|t| *t as u32 == v)
    }

    /// Bytes of one element of a fixed-size type.
    fn size(self) -> Option<usize> {
        use ValueType::*;
        Some(match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            Str | Array => return None,
        })
    }
}

/// A metadata value, borrowing the file.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(&'a [u8]),
    Array(Array<'a>),
}

/// An array, validated when parsed and read in place.
#[derive(Clone, Copy, Debug)]
pub struct Array<'a> {
    pub elem: ValueType,
    pub count: u64,
    /// The elements' bytes (exactly those).
    bytes: &'a [u8],
    version: u32,
}

impl<'a> Array<'a> {
    /// The elements in order. They were checked when the file was parsed, so iteration cannot fail.
    pub fn iter(&self) -> impl Iterator<Item = Value<'a>> + 'a {
        let mut c = Cursor {
            b: self.bytes,
            at: 0,
            version: self.version,
        };
        let elem = self.elem;
        (0..self.count).map_while(move |_| c.value(elem, 0).ok())
    }

    /// The elements as strings (bytes); `None` when they are not strings.
    pub fn strings(&self) -> Option<impl Iterator<Item = &'a [u8]> + 'a> {
        (self.elem == ValueType::Str).then(|| {
            self.iter().map(|v| match v {
                Value::Str(s) => s,
                _ => &[],
            })
        })
    }

    /// The elements as numbers; `None` when they are not numbers.
    pub fn numbers(&self) -> Option<impl Iterator<Item = f64> + 'a> {
        let numeric = self.elem.size().is_some() && self.elem != ValueType::Bool;
        numeric.then(|| self.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)))
    }
}

impl<'a> Value<'a> {
    pub fn as_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::Str(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&Array<'a>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for `enigma info`: long strings and arrays are summarised.
    pub fn summary(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => {
                let s = String::from_utf8_lossy(s);
                let short: String = s.chars().take(60).collect();
                let tail = if short.len() < s.len() { "..." } else { "" };
                format!("{:?}{tail}", short)
            }
            Value::Array(a) => format!("[{:?}; {}]", a.elem, a.count),
        }
    }
}

/// GGML tensor types this reader knows, with their block geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    K(enigma_kernels::kquants::KQuant),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use enigma_kernels::kquants::KQuant;
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            10 => GgmlType::K(KQuant::Q2K),
            11 => GgmlType::K(KQuant::Q3K),
            12 => GgmlType::K(KQuant::Q4K),
            13 => GgmlType::K(KQuant::Q5K),
            14 => GgmlType::K(KQuant::Q6K),
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        use enigma_kernels::kquants::KQuant;
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
            GgmlType::K(KQuant::Q2K) => 10,
            GgmlType::K(KQuant::Q3K) => 11,
            GgmlType::K(KQuant::Q4K) => 12,
            GgmlType::K(KQuant::Q5K) => 13,
            GgmlType::K(KQuant::Q6K) => 14,
            GgmlType::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::BF16 => "bf16",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::K(k) => k.name(),
        }
    }

    /// (elements, bytes) of one block.
    pub fn block(self) -> (u64, u64) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::K(k) => (enigma_kernels::kquants::QK_K as u64, k.block_bytes() as u64),
        }
    }
}

/// The name GGML gives a type id this reader does not handle, for the refusal message.
fn unknown_type_name(id: u32) -> String {
    let known = [
        (3, "q4_1"),
        (6, "q5_0"),
        (7, "q5_1"),
        (9, "q8_1"),
        (15, "q8_K"),
        (16, "iq2_xxs"),
        (17, "iq2_xs"),
        (18, "iq3_xxs"),
        (19, "iq1_s"),
        (20, "iq4_nl"),
        (21, "iq3_s"),
        (22, "iq2_s"),
        (23, "iq4_xs"),
        (24, "i8"),
        (25, "i16"),
        (26, "i32"),
        (27, "i64"),
        (28, "f64"),
        (29, "iq1_m"),
    ];
    known
        .iter()
        .find(|(i, _)| *i == id)
        .map_or_else(|| format!("type {id}"), |(_, n)| n.to_string())
}

/// One tensor: its dims (GGML order: `dims[0]` is the row length) and its bytes inside the file.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    pub name: &'a str,
    pub ty: GgmlType,
    /// `n_dims` entries; unused ones are 1.
    pub dims: [u64; MAX_DIMS],
    pub n_dims: usize,
    pub bytes: &'a [u8],
}

impl Tensor<'_> {
    pub fn numel(&self) -> u64 {
        // Checked against the byte length when parsed.
        self.dims.iter().product()
    }

    /// The shape as a row-major shape (outermost first), the way `.enigma` and numpy write it.
    pub fn shape(&self) -> Vec<u64> {
        self.dims[..self.n_dims].iter().rev().copied().collect()
    }

    /// The values widened to f32 (k-quants dequantized).
    pub fn to_f32(&self) -> Vec<f32> {
        use enigma_kernels as k;
        let n = self.numel() as usize;
        let mut out = vec![0f32; n];
        let b = self.bytes;
        match self.ty {
            GgmlType::F32 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            GgmlType::F16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = k::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            GgmlType::BF16 => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = k::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                }
            }
            GgmlType::Q8_0 => {
                for (y, c) in out.chunks_exact_mut(32).zip(b.chunks_exact(34)) {
                    let d = k::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                    for (o, q) in y.iter_mut().zip(&c[2..]) {
                        *o = f32::from(*q as i8) * d;
                    }
                }
            }
            GgmlType::Q4_0 => {
                for (y, c) in out.chunks_exact_mut(32).zip(b.chunks_exact(18)) {
                    let d = k::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
                    for (j, q) in c[2..].iter().enumerate() {
                        y[j] = (f32::from(q & 0x0F) - 8.0) * d;
                        y[j + 16] = (f32::from(q >> 4) - 8.0) * d;
                    }
                }
            }
            GgmlType::K(kq) => kq.dequantize(b, &mut out),
        }
        out
    }
}

/// One parsed GGUF file.
#[derive(Clone, Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub alignment: u64,
    /// Key-value pairs in file order.
    pub meta: Vec<(&'a str, Value<'a>)>,
    pub tensors: Vec<Tensor<'a>>,
    /// Where the tensor data starts.
    pub data_offset: u64,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
    version: u32,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            bail!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.b.len()
            );
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// A count or length: u32 in version 1, u64 after.
    fn len(&mut self, what: &str) -> Result<u64> {
        if self.version == 1 {
            self.u32(what).map(u64::from)
        } else {
            self.u64(what)
        }
    }
    fn string(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.len(what)?;
        self.take(n, what)
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value<'a>> {
        let fixed = |s: &[u8]| {
            let mut a = [0u8; 8];
            a[..s.len()].copy_from_slice(s);
            u64::from_le_bytes(a)
        };
        Ok(match ty {
            ValueType::Str => Value::Str(self.string("a string")?),
            ValueType::Array => {
                ensure!(depth < MAX_DEPTH, "arrays nested deeper than {MAX_DEPTH}");
                let elem_id = self.u32("an array's type")?;
                let elem = ValueType::from_u32(elem_id)
                    .with_context(|| format!("an array of unknown value type {elem_id}"))?;
                let count = self.len("an array's length")?;
                let start = self.at;
                match elem.size() {
                    // Fixed-size elements: the length is checked by taking the bytes at once.
                    Some(size) => {
                        let n = count
                            .checked_mul(size as u64)
                            .context("an array's byte length overflows")?;
                        self.take(n, "an array")?;
                    }
                    // Strings and arrays: every element walked; each takes at least 4 bytes (its
                    // length), so a count the file cannot hold fails at its end, without allocating.
                    None => {
                        for _ in 0..count {
                            self.value(elem, depth + 1)?;
                        }
                    }
                }
                Value::Array(Array {
                    elem,
                    count,
                    bytes: &self.b[start..self.at],
                    version: self.version,
                })
            }
            ValueType::Bool => {
                let v = self.take(1, "a bool")?[0];
                ensure!(v <= 1, "a bool holds {v}");
                Value::Bool(v == 1)
            }
            ValueType::F32 => Value::Float(f64::from(f32::from_bits(
                fixed(self.take(4, "an f32")?) as u32,
            ))),
            ValueType::F64 => Value::Float(f64::from_bits(fixed(self.take(8, "an f64")?))),
            ValueType::U8 => Value::Int(fixed(self.take(1, "a u8")?) as i128),
            ValueType::U16 => Value::Int(fixed(self.take(2, "a u16")?) as i128),
            ValueType::U32 => Value::Int(fixed(self.take(4, "a u32")?) as i128),
            ValueType::U64 => Value::Int(fixed(self.take(8, "a u64")?) as i128),
            ValueType::I8 => Value::Int(fixed(self.take(1, "an i8")?) as u8 as i8 as i128),
            ValueType::I16 => Value::Int(fixed(self.take(2, "an i16")?) as u16 as i16 as i128),
            ValueType::I32 => Value::Int(fixed(self.take(4, "an i32")?) as u32 as i32 as i128),
            ValueType::I64 => Value::Int(fixed(self.take(8, "an i64")?) as i64 as i128),
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses and checks the header, metadata and tensor table of one GGUF file. Tensor bytes are
    /// located (and bounds-checked) but not read.
    pub fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>> {
        ensure!(
            bytes.len() >= 8,
            "not a GGUF file: {} bytes, the header alone takes more",
            bytes.len()
        );
        ensure!(
            bytes[..4] == MAGIC,
            "not a GGUF file: it starts with {:02x?}, not \"GGUF\"",
            &bytes[..4]
        );
        let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if !(1..=3).contains(&version) {
            if (1..=3).contains(&version.swap_bytes()) {
                bail!(
                    "a big-endian GGUF file (version {}): only little-endian files are read",
                    version.swap_bytes()
                );
            }
            bail!("GGUF version {version}: versions 1 to 3 are read");
        }
        let mut c = Cursor {
            b: bytes,
            at: 8,
            version,
        };
        let n_tensors = c.len("the tensor count")?;
        let n_kv = c.len("the metadata count")?;
        let mut meta = Vec::new();
        for i in 0..n_kv {
            let key = c.string("a metadata key")?;
            let key = std::str::from_utf8(key)
                .ok()
                .with_context(|| format!("metadata key {i} is not UTF-8"))?;
            let ty = c.u32("a value type")?;
            let ty = ValueType::from_u32(ty)
                .with_context(|| format!("metadata '{key}' has unknown value type {ty}"))?;
            let v = c
                .value(ty, 0)
                .with_context(|| format!("metadata '{key}'"))?;
            meta.push((key, v));
        }
        let alignment = match meta.iter().find(|(k, _)| *k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => {
                let a = v
                    .as_int()
                    .filter(|a| *a > 0 && (*a as u64).is_power_of_two() && *a <= 1 << 20);
                a.context("general.alignment is not a power of two up to 1 MiB")? as u64
            }
        };
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let name = std::str::from_utf8(name)
                .ok()
                .with_context(|| format!("the name of tensor {i} is not UTF-8"))?;
            let n_dims = c.u32("a tensor's dimension count")? as usize;
            ensure!(
                (1..=MAX_DIMS).contains(&n_dims),
                "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS} are read)"
            );
            let mut dims = [1u64; MAX_DIMS];
            for d in dims.iter_mut().take(n_dims) {
                *d = c.len("a tensor dimension")?;
            }
            let ty_id = c.u32("a tensor type")?;
            let offset = c.u64("a tensor offset")?;
            infos.push((name, dims, n_dims, ty_id, offset));
        }
        let data_offset = (c.at as u64).div_ceil(alignment) * alignment;
        ensure!(
            data_offset <= bytes.len() as u64,
            "truncated: the tensor data would start at {data_offset}, the file has {} bytes",
            bytes.len()
        );
        let mut tensors: Vec<Tensor<'a>> = Vec::with_capacity(infos.len());
        for (name, dims, n_dims, ty_id, offset) in infos {
            let ty = GgmlType::from_id(ty_id).with_context(|| {
                format!(
                    "tensor '{name}' is {}, which this reader does not handle (f32, f16, bf16, q8_0, q4_0, q2_K..q6_K are)",
                    unknown_type_name(ty_id)
                )
            })?;
            ensure!(
                !tensors.iter().any(|t| t.name == name),
                "tensor '{name}' appears twice"
            );
            let numel = dims
                .iter()
                .try_fold(1u64, |a, d| a.checked_mul(*d))
                .filter(|n| *n > 0)
                .with_context(|| {
                    format!(
                        "tensor '{name}' has dims {:?}: empty or overflowing",
                        &dims[..n_dims]
                    )
                })?;
            let (be, bb) = ty.block();
            ensure!(
                dims[0] % be == 0,
                "tensor '{name}': rows of {} are not whole {} blocks of {be}",
                dims[0],
                ty.name()
            );
            let len = (numel / be)
                .checked_mul(bb)
                .with_context(|| format!("tensor '{name}' is too large"))?;
            ensure!(
                offset % alignment == 0,
                "tensor '{name}' is at data offset {offset}, not a multiple of the alignment {alignment}"
            );
            let end = data_offset
                .checked_add(offset)
                .and_then(|s| s.checked_add(len))
                .filter(|e| *e <= bytes.len() as u64)
                .with_context(|| {
                    format!(
                        "tensor '{name}' ({len} bytes at data offset {offset}) runs past the end of the file ({} bytes)",
                        bytes.len()
                    )
                })?;
            let start = (end - len) as usize;
            tensors.push(Tensor {
                name,
                ty,
                dims,
                n_dims,
                bytes: &bytes[start..end as usize],
            });
        }
        Ok(Gguf {
            version,
            alignment,
            meta,
            tensors,
            data_offset,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.meta.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// `(stem, index, count)` of a split file name `STEM-0000N-of-0000M.gguf`.
fn split_name(path: &Path) -> Option<(String, u32, u32)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".gguf")?;
    let (rest, count) = name.rsplit_once("-of-")?;
    let (stem, index) = rest.rsplit_once('-')?;
    let ok = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    (ok(index) && ok(count)).then_some(())?;
    Some((stem.to_string(), index.parse().ok()?, count.parse().ok()?))
}

/// A regular file mapped read-only; errors name it. Shared with the safetensors reader.
pub fn map_file(p: &Path) -> Result<memmap2::Mmap> {
    enigma_runtime::load::ensure_regular_file(p)?;
    let f = std::fs::File::open(p).with_context(|| p.display().to_string())?;
    // SAFETY: the map is read-only; a file truncated under it by another process is outside what a
    // reader can defend against, as with `.enigma` files (runtime-std/src/load.rs).
    unsafe { memmap2::Mmap::map(&f) }.with_context(|| p.display().to_string())
}

/// The files of a GGUF model held in memory: one, or every part of a split model.
pub struct GgufFiles {
    maps: Vec<(PathBuf, memmap2::Mmap)>,
}

impl GgufFiles {
    /// Maps `path`; when it names one part of a split model (`-0000N-of-0000M.gguf`), maps all M parts.
    pub fn open(path: &Path) -> Result<GgufFiles> {
        let paths = match split_name(path) {
            Some((stem, _, count)) => {
                ensure!(count >= 1, "{}: a split of 0 parts", path.display());
                let dir = path.parent().unwrap_or(Path::new(""));
                (1..=count)
                    .map(|i| dir.join(format!("{stem}-{i:05}-of-{count:05}.gguf")))
                    .collect()
            }
            None => vec![path.to_path_buf()],
        };
        let mut maps = Vec::new();
        for p in paths {
            let m = map_file(&p)?;
            maps.push((p, m));
        }
        Ok(GgufFiles { maps })
    }

    /// Parses every part; a part's errors name its file. The parts' tensors are joined into the first's
    /// list, and a split must hold the parts the first part announces.
    pub fn parse(&self) -> Result<Gguf<'_>> {
        let mut parts = Vec::new();
        for (p, m) in &self.maps {
            parts.push(Gguf::parse(m).with_context(|| p.display().to_string())?);
        }
        let mut parts = parts.into_iter();
        let Some(mut first) = parts.next() else {
            bail!("no files");
        };
        let count = first
            .get("split.count")
            .and_then(|v| v.as_int())
            .unwrap_or(1);
        ensure!(
            count == self.maps.len() as i128,
            "{}: the file says the model has {count} parts, the name says {}",
            self.maps[0].0.display(),
            self.maps.len()
        );
        for (i, part) in parts.enumerate() {
            let no = part.get("split.no").and_then(|v| v.as_int());
            ensure!(
                no == Some(i as i128 + 1),
                "{}: part {} of the split says it is part {:?}",
                self.maps[i + 1].0.display(),
                i + 2,
                no.map(|n| n + 1)
            );
            for t in part.tensors {
                ensure!(
                    first.tensor(t.name).is_none(),
                    "tensor '{}' appears in two parts",
                    t.name
                );
                first.tensors.push(t);
            }
        }
        Ok(first)
    }

    pub fn path(&self) -> &Path {
        &self.maps[0].0
    }

    /// Bytes of all parts together.
    pub fn len(&self) -> u64 {
        self.maps.iter().map(|(_, m)| m.len() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `path` is a regular file holding GGUF (its first four bytes), whatever its name. Anything else
/// (a FIFO, a device) is not opened here: reading it could block; the `.enigma` loader refuses it.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && magic == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_are_recognised() {
        assert_eq!(
            split_name(Path::new("/m/llama-00002-of-00003.gguf")),
            Some(("llama".into(), 2, 3))
        );
        assert_eq!(split_name(Path::new("llama-2-of-3.gguf")), None);
        assert_eq!(split_name(Path::new("llama.gguf")), None);
    }
}
