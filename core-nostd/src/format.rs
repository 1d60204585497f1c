//! The `.enigma` model file: a zero-copy reader over `&[u8]` (flash on an MCU, an mmap on a host).
//!
//! Layout (docs/FORMAT.md is the full specification):
//!
//! ```text
//! 0   magic "ENGM"
//! 4   format version, u32 LE
//! 8   header length H, u32 LE
//! 12  CRC32 (IEEE) of the header bytes, u32 LE
//! 16  header: H bytes of postcard-encoded `Header`
//! ... zero padding to `data_offset` (a multiple of 64)
//!     tensor data; every tensor starts at a multiple of 64 from the start of the file
//! ```
//!
//! [`EnigmaFile::parse`] checks every field, offset, length, dtype and shape before any view is handed out,
//! so a truncated, corrupt or hostile file is an [`Error`], never a panic or an out-of-bounds read.

use crate::config::{Config, TensorSpec};
use crate::error::name;
use crate::{Error, Result};
use enigma_kernels::{DType, ViewError, WeightView};
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"ENGM";
/// The one format version this build reads. Any change to the header's fields bumps it (postcard is not
/// self-describing, so an old reader cannot skip a new field); readers refuse versions they do not know.
pub const VERSION: u32 = 1;
pub const ALIGN: usize = 64;
pub const PRELUDE_LEN: usize = 16;
pub const MAX_TENSORS: usize = 32;
pub const MAX_DIMS: usize = 4;

pub const TOK_PIECES: &str = "tokenizer.pieces";
pub const TOK_OFFSETS: &str = "tokenizer.offsets";
pub const TOK_SCORES: &str = "tokenizer.scores";
pub const TOK_SORTED: &str = "tokenizer.sorted";
/// Optional, one u8: the regex pre-tokenizer's [`crate::pretok::Split`]; absent means none.
pub const TOK_SPLIT: &str = "tokenizer.split";
/// Optional, u32 ids: the added tokens that text spelling their piece encodes to whole.
pub const TOK_ADDED: &str = "tokenizer.added";
/// Optional, one u8 of 1: text is encoded without BOS in front (a GGUF file's `add_bos_token` false, a
/// Hugging Face tokenizer whose post-processor adds none); absent means BOS, as llama2.c and Llama do.
pub const TOK_NO_BOS: &str = "tokenizer.no_bos";
/// Optional, one u8 of 1: the dummy prefix is left out of text that already starts with a space, as
/// `tokenizers`' Metaspace and ByteLevel(`add_prefix_space`) do; absent means it is always added, as
/// SentencePiece, llama2.c and llama.cpp do.
pub const TOK_PREFIX_IF_UNSPACED: &str = "tokenizer.prefix_if_unspaced";

/// The postcard-encoded header. The writer (std side) and this reader share it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header<'a> {
    pub config: Config,
    pub tokenizer: TokenizerMeta,
    #[serde(borrow)]
    pub tensors: heapless::Vec<TensorEntry<'a>, MAX_TENSORS>,
    #[serde(borrow)]
    pub provenance: Provenance<'a>,
    /// Start of the tensor data, a multiple of 64.
    pub data_offset: u64,
    /// Bytes from `data_offset` to the end of the last tensor; the file ends there.
    pub data_len: u64,
    /// CRC32 (IEEE) of those `data_len` bytes.
    pub data_crc32: u32,
}

/// Special tokens and encoding rules of the tokenizer stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerMeta {
    pub bos: u32,
    pub eos: u32,
    pub pad: Option<u32>,
    /// Longest piece in bytes.
    pub max_token_len: u32,
    /// Encode prepends the piece " " to non-empty text (SentencePiece's dummy prefix, as llama2.c does).
    pub add_dummy_prefix: bool,
    /// Id of the piece `<0x00>`; byte `b` that no piece covers encodes as `byte_fallback + b`.
    pub byte_fallback: Option<u32>,
    /// Markers of the chat template, when the tokenizer has them.
    pub chat: Option<ChatTokens>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTokens {
    pub user: u32,
    pub assistant: u32,
}

/// Where a model came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance<'a> {
    /// e.g. `llama2c:stories260K.bin` or `trained:tinyshakespeare.txt`
    pub source: &'a str,
    /// The tool and version that wrote the file.
    pub tool: &'a str,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub notes: &'a str,
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry<'a> {
    pub name: &'a str,
    /// A [`DType`] code.
    pub dtype: u8,
    pub shape: heapless::Vec<u64, MAX_DIMS>,
    /// From the start of the file; a multiple of 64.
    pub offset: u64,
    pub len: u64,
}

/// A validated tensor: its dtype, shape and bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub dtype: DType,
    /// Unused trailing dims are 0.
    pub shape: [u64; MAX_DIMS],
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    pub fn numel(&self) -> u64 {
        self.shape.iter().take_while(|d| **d != 0).product()
    }
}

/// A parsed, validated `.enigma` file borrowing its bytes.
#[derive(Clone, Debug)]
pub struct EnigmaFile<'a> {
    bytes: &'a [u8],
    header: Header<'a>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> EnigmaFile<'a> {
    /// Parses and validates the prelude, header and tensor table. Does not read tensor data; call
    /// [`EnigmaFile::verify_checksum`] for that. `bytes` must start on a 64-byte boundary.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::Empty);
        }
        let len = bytes.len() as u64;
        if bytes.len() < PRELUDE_LEN {
            return Err(Error::Truncated {
                needed: PRELUDE_LEN as u64,
                len,
            });
        }
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = u32_at(bytes, 4);
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                found: version,
                supported: VERSION,
            });
        }
        if cfg!(target_endian = "big") {
            return Err(Error::BigEndianHost);
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
            return Err(Error::BufferMisaligned);
        }
        let header_len = u32_at(bytes, 8) as usize;
        let header_end = PRELUDE_LEN + header_len;
        let header_bytes = bytes.get(PRELUDE_LEN..header_end).ok_or(Error::Truncated {
            needed: header_end as u64,
            len,
        })?;
        let expected = u32_at(bytes, 12);
        let found = crc32fast::hash(header_bytes);
        if found != expected {
            return Err(Error::HeaderChecksum { expected, found });
        }
        let header: Header<'a> =
            postcard::from_bytes(header_bytes).map_err(|_| Error::HeaderCorrupt)?;
        header.config.validate()?;
        let file = EnigmaFile { bytes, header };
        file.check_table(header_end as u64)?;
        Ok(file)
    }

    fn check_table(&self, header_end: u64) -> Result<()> {
        let h = &self.header;
        let file_len = self.bytes.len() as u64;
        if h.data_offset < header_end || !h.data_offset.is_multiple_of(ALIGN as u64) {
            return Err(Error::HeaderCorrupt);
        }
        let data_end = h
            .data_offset
            .checked_add(h.data_len)
            .ok_or(Error::HeaderCorrupt)?;
        if data_end > file_len {
            return Err(Error::Truncated {
                needed: data_end,
                len: file_len,
            });
        }
        let mut prev_end = h.data_offset;
        for t in &h.tensors {
            let n = || name(t.name);
            let dtype = DType::from_code(t.dtype).ok_or_else(|| Error::UnknownDType {
                name: n(),
                code: t.dtype,
            })?;
            if t.shape.is_empty() || t.shape.contains(&0) {
                return Err(Error::TensorLength {
                    name: n(),
                    expected: 0,
                    found: t.len,
                });
            }
            let numel = t.shape.iter().try_fold(1u64, |a, d| a.checked_mul(*d));
            let expected = numel
                .and_then(|e| dtype.bytes_for(e))
                .ok_or(Error::HeaderCorrupt)?;
            if expected != t.len {
                return Err(Error::TensorLength {
                    name: n(),
                    expected,
                    found: t.len,
                });
            }
            if t.offset % ALIGN as u64 != 0 {
                return Err(Error::TensorMisaligned {
                    name: n(),
                    offset: t.offset,
                });
            }
            let end = t.offset.checked_add(t.len);
            match end {
                Some(end) if end <= data_end => {}
                _ => {
                    return Err(Error::TensorOutOfBounds {
                        name: n(),
                        offset: t.offset,
                        len: t.len,
                        file_len,
                    });
                }
            }
            if t.offset < prev_end {
                return Err(Error::TensorOverlap { name: n() });
            }
            prev_end = t.offset + t.len;
        }
        Ok(())
    }

    /// Checks the CRC32 of the tensor data. Loaders call it once; it reads every byte of the model.
    pub fn verify_checksum(&self) -> Result<()> {
        let h = &self.header;
        let data = &self.bytes[h.data_offset as usize..(h.data_offset + h.data_len) as usize];
        let found = crc32fast::hash(data);
        if found != h.data_crc32 {
            return Err(Error::DataChecksum {
                expected: h.data_crc32,
                found,
            });
        }
        Ok(())
    }

    pub fn header(&self) -> &Header<'a> {
        &self.header
    }

    pub fn config(&self) -> &Config {
        &self.header.config
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'a>> + '_ {
        self.header.tensors.iter().map(|t| {
            let mut shape = [0u64; MAX_DIMS];
            shape[..t.shape.len()].copy_from_slice(&t.shape);
            TensorRef {
                name: t.name,
                // Validated in `parse`.
                dtype: DType::from_code(t.dtype).unwrap_or(DType::U8),
                shape,
                bytes: &self.bytes[t.offset as usize..(t.offset + t.len) as usize],
            }
        })
    }

    pub fn tensor(&self, name: &str) -> Option<TensorRef<'a>> {
        self.tensors().find(|t| t.name == name)
    }

    fn expect(&self, name: &'static str, shape: &[u64]) -> Result<TensorRef<'a>> {
        let t = self.tensor(name).ok_or(Error::MissingTensor { name })?;
        let mut want = [0u64; MAX_DIMS];
        want[..shape.len()].copy_from_slice(shape);
        if t.shape != want {
            return Err(Error::ShapeMismatch {
                name,
                expected: want,
                found: t.shape,
            });
        }
        Ok(t)
    }

    /// A tensor that must be f32 with exactly `shape`.
    pub fn f32s(&self, name: &'static str, shape: &[u64]) -> Result<&'a [f32]> {
        self.typed(name, shape, DType::F32)
    }

    /// A tensor that must be u32 with exactly `shape`.
    pub fn u32s(&self, name: &'static str, shape: &[u64]) -> Result<&'a [u32]> {
        self.typed(name, shape, DType::U32)
    }

    /// The bytes of a u8 tensor, whatever its length.
    pub fn raw_u8(&self, name: &'static str) -> Result<&'a [u8]> {
        let t = self.tensor(name).ok_or(Error::MissingTensor { name })?;
        if t.dtype != DType::U8 || t.shape[1] != 0 {
            return Err(Error::UnsupportedDType {
                name: crate::error::name(name),
                dtype: t.dtype.name(),
            });
        }
        Ok(t.bytes)
    }

    fn typed<T: bytemuck::Pod>(
        &self,
        name: &'static str,
        shape: &[u64],
        dtype: DType,
    ) -> Result<&'a [T]> {
        let t = self.expect(name, shape)?;
        if t.dtype != dtype {
            return Err(Error::UnsupportedDType {
                name: crate::error::name(name),
                dtype: t.dtype.name(),
            });
        }
        bytemuck::try_cast_slice(t.bytes).map_err(|_| Error::BufferMisaligned)
    }

    /// A parameter matrix of the layout, viewed as rows of its last dim, in whatever dtype it is stored.
    pub fn weight(&self, spec: TensorSpec) -> Result<WeightView<'a>> {
        let t = self.expect(spec.name, &spec.shape[..spec.ndim()])?;
        let cols = spec.row_len() as usize;
        let rows = (spec.numel() / spec.row_len()) as usize;
        WeightView::from_bytes(t.dtype, t.bytes, rows, cols).map_err(|e| match e {
            ViewError::UnsupportedDType(d) => Error::UnsupportedDType {
                name: name(spec.name),
                dtype: d.name(),
            },
            ViewError::Misaligned => Error::BufferMisaligned,
            ViewError::Length => Error::TensorLength {
                name: name(spec.name),
                expected: spec.numel(),
                found: t.bytes.len() as u64,
            },
        })
    }
}
