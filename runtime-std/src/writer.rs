//! Writing `.enigma` files (docs/FORMAT.md). The reader lives in `enigma-core`; both share its `Header`.

use crate::{Error, Result};
use enigma_core::config::{Config, ParamLayout};
use enigma_core::format::{
    ChatTokens, Header, Provenance, TensorEntry, TokenizerMeta, ALIGN, MAGIC, MAX_DIMS,
    MAX_TENSORS, PRELUDE_LEN, TOK_ADDED, TOK_NO_BOS, TOK_OFFSETS, TOK_PIECES,
    TOK_PREFIX_IF_UNSPACED, TOK_SCORES, TOK_SORTED, TOK_SPLIT, VERSION,
};
use enigma_core::kernels::DType;
use enigma_core::pretok::Split;
use enigma_core::EnigmaFile;
use std::borrow::Cow;
use std::path::Path;

/// Kept under this path too: the module manager calls it here.
pub use crate::fsutil::atomic_write;

/// A tokenizer's vocabulary held on the heap, before it is written into a model file.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerData {
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub bos: u32,
    pub eos: u32,
    pub pad: Option<u32>,
    pub add_dummy_prefix: bool,
    pub chat: Option<ChatTokens>,
    /// The regex pre-tokenizer of a byte-level vocabulary; written as the optional `tokenizer.split`
    /// tensor when it is not `None`.
    pub split: Split,
    /// Ids that text spelling their piece encodes to whole (`tokenizer.added`, written when not empty).
    pub added: Vec<u32>,
}

impl TokenizerData {
    /// The header record: byte fallback is on when pieces `<0x00>`..`<0xFF>` sit at consecutive ids.
    pub fn meta(&self) -> TokenizerMeta {
        let id = |p: &[u8]| self.pieces.iter().position(|q| q == p);
        let byte_fallback = id(b"<0x00>").filter(|&base| {
            (0..256).all(|b| {
                self.pieces.get(base + b).map(|p| p.as_slice())
                    == Some(format!("<0x{b:02X}>").as_bytes())
            })
        });
        TokenizerMeta {
            bos: self.bos,
            eos: self.eos,
            pad: self.pad,
            max_token_len: self.pieces.iter().map(|p| p.len()).max().unwrap_or(0) as u32,
            add_dummy_prefix: self.add_dummy_prefix,
            byte_fallback: byte_fallback.map(|b| b as u32),
            chat: self.chat,
        }
    }

    /// Refuses a vocabulary beyond the limits every tokenizer loader enforces
    /// ([`enigma_core::tokenizer::VocabBudget`]).
    pub fn check_limits(&self) -> Result<(), enigma_core::Error> {
        let mut budget = enigma_core::tokenizer::VocabBudget::default();
        self.pieces.iter().try_for_each(|p| budget.add(p.len()))
    }

    /// The four tokenizer tensors: pieces (u8), offsets (u32, V+1), scores (f32, V), sorted ids (u32, V).
    fn arrays(&self) -> (Vec<u8>, Vec<u32>, Vec<u32>) {
        let mut bytes = Vec::new();
        let mut offsets = vec![0u32];
        for p in &self.pieces {
            bytes.extend_from_slice(p);
            offsets.push(bytes.len() as u32);
        }
        let mut sorted: Vec<u32> = (0..self.pieces.len() as u32).collect();
        sorted.sort_by(|&a, &b| self.pieces[a as usize].cmp(&self.pieces[b as usize]));
        (bytes, offsets, sorted)
    }
}

/// A tensor of a model that is neither a parameter nor one of the tokenizer's arrays: a kept chat template,
/// a tokenizer flag (`tokenizer.no_bos`, `tokenizer.split`, `tokenizer.added`, ...). Owned, so a model
/// rewritten later (quantized, or trained on from `--init` across checkpoints) keeps what it said.
#[derive(Clone, Debug, PartialEq)]
pub struct Extra {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// The [`Extra`] tensors of `file`. The split and added-token tensors are left out: [`TokenizerData`]
/// carries those itself.
pub fn extras(file: &EnigmaFile<'_>) -> Vec<Extra> {
    let layout = ParamLayout::new(file.config());
    let ours = |name: &str| {
        [
            TOK_PIECES,
            TOK_OFFSETS,
            TOK_SCORES,
            TOK_SORTED,
            TOK_SPLIT,
            TOK_ADDED,
        ]
        .contains(&name)
            || layout.iter().any(|spec| spec.name == name)
    };
    file.tensors()
        .filter(|t| !ours(t.name))
        .map(|t| Extra {
            name: t.name.to_string(),
            dtype: t.dtype,
            shape: t.shape.iter().copied().take_while(|&d| d != 0).collect(),
            bytes: t.bytes.to_vec(),
        })
        .collect()
}

/// Padding between tensors, fed to the data's CRC.
static ZEROS: [u8; ALIGN] = [0; ALIGN];

struct PendingTensor<'a> {
    name: String,
    dtype: DType,
    shape: Vec<u64>,
    bytes: Cow<'a, [u8]>,
}

/// Builds a `.enigma` file: config, tokenizer, tensors, provenance.
pub struct ModelWriter<'a> {
    config: Config,
    tokenizer: TokenizerData,
    tensors: Vec<PendingTensor<'a>>,
    source: String,
    notes: String,
    created_unix: u64,
}

fn le_bytes<T: Copy>(v: &[T], f: impl Fn(T) -> [u8; 4]) -> Vec<u8> {
    v.iter().flat_map(|x| f(*x)).collect()
}

impl<'a> ModelWriter<'a> {
    pub fn new(config: Config, tokenizer: TokenizerData) -> Self {
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ModelWriter {
            config,
            tokenizer,
            tensors: Vec::new(),
            source: String::new(),
            notes: String::new(),
            created_unix,
        }
    }

    pub fn provenance(&mut self, source: impl Into<String>, notes: impl Into<String>) -> &mut Self {
        self.source = source.into();
        self.notes = notes.into();
        self
    }

    /// Records that the vocabulary encodes text without BOS in front ([`TOK_NO_BOS`]); by default it has one.
    pub fn without_bos(&mut self) -> &mut Self {
        self.flag(TOK_NO_BOS)
    }

    /// Records that text already starting with a space gets no dummy prefix ([`TOK_PREFIX_IF_UNSPACED`]);
    /// by default every non-empty text gets one.
    pub fn prefix_if_unspaced(&mut self) -> &mut Self {
        self.flag(TOK_PREFIX_IF_UNSPACED)
    }

    /// An optional tokenizer flag: one byte of 1 (the core reads absent as false).
    fn flag(&mut self, name: &str) -> &mut Self {
        self.tensor(name, DType::U8, &[1], vec![1u8])
    }

    /// Adds a tensor of raw little-endian bytes.
    pub fn tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u64],
        bytes: impl Into<Cow<'a, [u8]>>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dtype,
            shape: shape.into(),
            bytes: bytes.into(),
        });
        self
    }

    pub fn f32_tensor(&mut self, name: &str, shape: &[u64], data: &[f32]) -> &mut Self {
        self.tensor(name, DType::F32, shape, le_bytes(data, f32::to_le_bytes))
    }

    /// Adds every parameter of the layout, in f32, from one flat buffer laid out by [`ParamLayout`].
    pub fn f32_params(&mut self, params: &[f32]) -> Result<&mut Self> {
        let config = self.config;
        crate::quantize::add_params(self, &config, params, DType::F32)?;
        Ok(self)
    }

    /// Adds the tensors of `file` that are neither parameters nor the tokenizer's arrays ([`extras`]) as
    /// they are, so that rewriting a model (quantize, convert) keeps them.
    pub fn carry_extras(&mut self, file: &EnigmaFile<'_>) -> &mut Self {
        for e in extras(file) {
            self.extra(&e);
        }
        self
    }

    /// Adds one tensor [`extras`] took from another model.
    pub fn extra(&mut self, e: &Extra) -> &mut Self {
        self.tensor(&e.name, e.dtype, &e.shape, e.bytes.clone())
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.assemble(|len| Ok(vec![0u8; len]))
    }

    /// The model as a loaded [`ModelFile`] named `name`, assembled in its final (aligned) memory: an import
    /// that runs a model without writing it (a GGUF file) holds its tensors and this copy, never a third.
    pub fn to_model(&self, name: impl Into<std::path::PathBuf>) -> Result<crate::ModelFile> {
        let bytes = self.assemble(|len| Ok(crate::load::AlignedBytes::zeroed(len)))?;
        crate::ModelFile::from_aligned(bytes, name.into())
    }

    /// Checks the parts, lays the file out and writes it into the buffer `alloc(len)` returns (at least `len`
    /// bytes).
    fn assemble<B: std::ops::DerefMut<Target = [u8]>>(
        &self,
        alloc: impl FnOnce(usize) -> Result<B>,
    ) -> Result<B> {
        self.config.validate()?;
        let tok = &self.tokenizer;
        tok.check_limits()?;
        if tok.pieces.len() != self.config.vocab_size as usize
            || tok.scores.len() != tok.pieces.len()
        {
            return Err(Error::Invalid(format!(
                "the tokenizer has {} pieces and {} scores but the config's vocabulary is {}",
                tok.pieces.len(),
                tok.scores.len(),
                self.config.vocab_size
            )));
        }
        let (pieces, offsets, sorted) = tok.arrays();
        let v = tok.pieces.len() as u64;
        let tok_tensors = [
            (TOK_PIECES, DType::U8, vec![pieces.len() as u64], pieces),
            (
                TOK_OFFSETS,
                DType::U32,
                vec![v + 1],
                le_bytes(&offsets, u32::to_le_bytes),
            ),
            (
                TOK_SCORES,
                DType::F32,
                vec![v],
                le_bytes(&tok.scores, f32::to_le_bytes),
            ),
            (
                TOK_SORTED,
                DType::U32,
                vec![v],
                le_bytes(&sorted, u32::to_le_bytes),
            ),
        ];
        let split = [tok.split as u8];
        let split_tensor = (tok.split != Split::None).then_some((
            TOK_SPLIT,
            DType::U8,
            [1u64].as_slice(),
            split.as_slice(),
        ));
        let added = le_bytes(&tok.added, u32::to_le_bytes);
        let added_shape = [tok.added.len() as u64];
        let added_tensor = (!tok.added.is_empty()).then_some((
            TOK_ADDED,
            DType::U32,
            added_shape.as_slice(),
            added.as_slice(),
        ));
        let all: Vec<(&str, DType, &[u64], &[u8])> = self
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), &*t.bytes))
            .chain(
                tok_tensors
                    .iter()
                    .map(|(n, d, s, b)| (*n, *d, s.as_slice(), b.as_slice())),
            )
            .chain(split_tensor)
            .chain(added_tensor)
            .collect();
        if all.len() > MAX_TENSORS {
            return Err(Error::Invalid(format!(
                "{} tensors; a model file holds at most {MAX_TENSORS}",
                all.len()
            )));
        }
        for (name, dtype, shape, bytes) in &all {
            let numel = shape.iter().product::<u64>();
            if shape.is_empty()
                || shape.len() > MAX_DIMS
                || dtype.bytes_for(numel) != Some(bytes.len() as u64)
            {
                return Err(Error::Invalid(format!(
                    "tensor '{name}': {} bytes do not hold shape {shape:?} of {}",
                    bytes.len(),
                    dtype.name()
                )));
            }
        }

        let tool = format!("enigma {}", env!("CARGO_PKG_VERSION"));
        let align = |x: u64| x.div_ceil(ALIGN as u64) * ALIGN as u64;
        // Where each tensor starts in the data, and the data's CRC, from the tensors where they are: the data
        // is assembled once, in the caller's buffer, so a model is never held three times over.
        let mut rels = Vec::with_capacity(all.len());
        let mut crc = crc32fast::Hasher::new();
        let mut data_len = 0u64;
        for (_, _, _, bytes) in &all {
            let rel = align(data_len);
            crc.update(&ZEROS[..(rel - data_len) as usize]);
            crc.update(bytes);
            rels.push(rel);
            data_len = rel + bytes.len() as u64;
        }
        let data_crc32 = crc.finalize();
        // Offsets are varints in the header, so its length depends on them: grow the data offset until the
        // header fits in front of it.
        let mut data_offset = align(PRELUDE_LEN as u64 + 256);
        let header_bytes = loop {
            let mut entries = heapless::Vec::<TensorEntry<'_>, MAX_TENSORS>::new();
            for ((name, dtype, shape, bytes), rel) in all.iter().zip(&rels) {
                let entry = TensorEntry {
                    name,
                    dtype: *dtype as u8,
                    shape: shape.iter().copied().collect(),
                    offset: data_offset + rel,
                    len: bytes.len() as u64,
                };
                entries
                    .push(entry)
                    .map_err(|_| Error::Invalid("too many tensors".into()))?;
            }
            let header = Header {
                config: self.config,
                tokenizer: tok.meta(),
                tensors: entries,
                provenance: Provenance {
                    source: &self.source,
                    tool: &tool,
                    created_unix: self.created_unix,
                    notes: &self.notes,
                },
                data_offset,
                data_len,
                data_crc32,
            };
            let hb = postcard::to_allocvec(&header)
                .map_err(|e| Error::Invalid(format!("header: {e}")))?;
            let need = align(PRELUDE_LEN as u64 + hb.len() as u64);
            if need <= data_offset {
                break hb;
            }
            data_offset = need;
        };

        let total = usize::try_from(data_offset + data_len).map_err(|_| {
            Error::Invalid("the model is larger than this machine's address space".into())
        })?;
        let mut out = alloc(total)?;
        let buf = &mut out[..total];
        let mut prelude = Vec::with_capacity(PRELUDE_LEN);
        prelude.extend_from_slice(&MAGIC);
        prelude.extend_from_slice(&VERSION.to_le_bytes());
        prelude.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
        prelude.extend_from_slice(&crc32fast::hash(&header_bytes).to_le_bytes());
        let (head, data) = buf.split_at_mut(data_offset as usize);
        head.fill(0);
        head[..PRELUDE_LEN].copy_from_slice(&prelude);
        head[PRELUDE_LEN..PRELUDE_LEN + header_bytes.len()].copy_from_slice(&header_bytes);
        let mut at = 0usize;
        for ((_, _, _, bytes), &rel) in all.iter().zip(&rels) {
            let rel = rel as usize;
            data[at..rel].fill(0);
            data[rel..rel + bytes.len()].copy_from_slice(bytes);
            at = rel + bytes.len();
        }
        Ok(out)
    }

    /// Writes the file atomically: a reader sees the old file or the whole new one, never a part.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        atomic_write(path.as_ref(), &self.to_bytes()?)
    }
}
