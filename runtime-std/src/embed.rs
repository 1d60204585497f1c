//! Sentence embeddings on the host: a `.enigma` encoder file ([`enigma_core::encoder`]) with its
//! WordPiece tokenizer, texts in, unit vectors out. Sentences are split over threads (each packs its share
//! into batches of the core's packed layout, with its own scratch), so a batch of 32 keeps every core busy.

use crate::{Error, ModelFile, Result};
use enigma_core::encoder::{is_encoder, Encoder};
use enigma_core::kernels::Kernels;
use enigma_core::wordpiece::WordPiece;
use std::path::Path;

/// Tokens packed into one call of the core: big enough that each linear layer is a real matrix product,
/// small enough that the scratch (about 3 KB a token for MiniLM) stays in the last-level cache's range.
const BATCH_TOKENS: usize = 2048;

/// A loaded encoder model.
pub struct Embedder {
    file: ModelFile,
    kernels: &'static Kernels,
    threads: usize,
    dim: usize,
}

impl Embedder {
    /// Opens an encoder `.enigma` file; a decoder file is refused by name.
    pub fn open(path: impl AsRef<Path>, kernels: &'static Kernels) -> Result<Self> {
        Self::from_file(ModelFile::open(path)?, kernels)
    }

    pub fn from_file(file: ModelFile, kernels: &'static Kernels) -> Result<Self> {
        let dim = {
            let parsed = file.parse()?;
            if !is_encoder(&parsed) {
                return Err(Error::Invalid(format!(
                    "{} is not a sentence-embedding (encoder) model",
                    file.path().display()
                )));
            }
            WordPiece::from_file(&parsed)?;
            Encoder::from_file(&parsed, kernels)?.dim()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Embedder {
            file,
            kernels,
            threads,
            dim,
        })
    }

    /// Caps the threads `embed` uses (at least one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The token ids of `text`, `[CLS]` and `[SEP]` included, truncated to the model's length.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.tokenize_many(&[text])?.remove(0))
    }

    /// [`Embedder::tokenize`] of each text, the vocabulary checked once.
    pub fn tokenize_many<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        self.tokenize_with(texts, true)
    }

    /// Every token id of each text, `[CLS]` and `[SEP]` included, however long (no truncation).
    pub fn tokenize_untruncated<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        self.tokenize_with(texts, false)
    }

    fn tokenize_with<S: AsRef<str>>(&self, texts: &[S], truncate: bool) -> Result<Vec<Vec<u32>>> {
        let parsed = self.file.parse()?;
        let tok = WordPiece::from_file(&parsed)?;
        let seq = parsed.config().seq_len as usize;
        let mut buf = Vec::new();
        texts
            .iter()
            .map(|t| {
                let t = t.as_ref();
                // Untruncated, each id covers at least one normalized character, and a UTF-8 byte
                // normalizes to at most three (a 3-byte Hangul syllable decomposes to three jamo).
                let max = if truncate { seq } else { 3 * t.len() + 2 };
                buf.resize(max.max(2), 0);
                let n = tok.encode(t, max, &mut buf)?;
                Ok(buf[..n].to_vec())
            })
            .collect()
    }

    /// One unit vector of [`Embedder::dim`] per text.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        self.embed_tokenized(&self.tokenize_many(texts)?)
    }

    /// Embeddings of tokenized sentences ([`Embedder::tokenize_many`]), split over the threads.
    pub fn embed_tokenized(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let threads = self.threads.min(ids.len()).max(1);
        if threads == 1 {
            return self.embed_ids(ids);
        }
        // Contiguous shares of about equal token counts, so the threads finish together.
        let total: usize = ids.iter().map(Vec::len).sum();
        let mut shares = Vec::new();
        let (mut start, mut acc) = (0, 0);
        for (i, s) in ids.iter().enumerate() {
            acc += s.len();
            if acc * threads >= total * (shares.len() + 1) && shares.len() + 1 < threads {
                shares.push(&ids[start..=i]);
                start = i + 1;
            }
        }
        shares.push(&ids[start..]);
        let results: Vec<Result<Vec<Vec<f32>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = shares
                .iter()
                .map(|share| s.spawn(|| self.embed_ids(share)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Invalid("an embedding thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(ids.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Embeddings of tokenized sentences, in packed batches of about [`BATCH_TOKENS`].
    fn embed_ids(&self, sentences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        let parsed = self.file.parse()?;
        let enc = Encoder::from_file(&parsed, self.kernels)?;
        let d = enc.dim();
        let mut out = Vec::with_capacity(sentences.len());
        let (mut scratch, mut flat, mut lens, mut emb) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut i = 0;
        while i < sentences.len() {
            flat.clear();
            lens.clear();
            while i < sentences.len()
                && (lens.is_empty() || flat.len() + sentences[i].len() <= BATCH_TOKENS)
            {
                flat.extend_from_slice(&sentences[i]);
                lens.push(sentences[i].len());
                i += 1;
            }
            let longest = lens.iter().copied().max().unwrap_or(0);
            scratch.resize(enc.scratch_len(flat.len(), longest), 0.0);
            emb.resize(lens.len() * d, 0.0);
            enc.embed(&flat, &lens, &mut scratch, &mut emb)?;
            out.extend(emb.chunks_exact(d).map(<[f32]>::to_vec));
        }
        Ok(out)
    }
}
