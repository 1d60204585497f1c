//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! ```text
//! 0   magic "ENGMCKPT"
//! 8   version u32 LE
//! 12  header length H u32 LE
//! 16  CRC32 of everything after these 20 bytes, u32 LE
//! 20  header: H bytes of JSON (config, tokenizer, options, step, data position, optimizer step)
//! ... parameters, AdamW's first and second moments: 3 · P f32 LE, in `ParamLayout` order
//! ```
//!
//! Written atomically (a temporary file in the same folder, fsync, rename, fsync of the folder), so a crash or
//! `kill -9` in the middle of a save leaves the previous checkpoint whole.

use super::options::TrainOptions;
use anyhow::{ensure, Context, Result};
use enigma_core::Config;
use enigma_runtime::fsutil::atomic_write_with;
use enigma_runtime::{Extra, TokenizerData};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"ENGMCKPT";
const VERSION: u32 = 1;
const PRELUDE: usize = 20;

/// The file name of the checkpoint inside a training folder (the model store names it too, since a model's
/// folder can be one).
pub const FILE: &str = enigma_models::CHECKPOINT_FILE;

/// A tokenizer in JSON: pieces as hex, since they need not be UTF-8.
#[derive(Serialize, Deserialize)]
struct TokJson {
    pieces: Vec<String>,
    scores: Vec<f32>,
    bos: u32,
    eos: u32,
    pad: Option<u32>,
    add_dummy_prefix: bool,
    chat: Option<[u32; 2]>,
    /// `enigma_core::pretok::Split` as its number; absent in checkpoints written before it was kept.
    #[serde(default)]
    split: u8,
    #[serde(default)]
    added: Vec<u32>,
    /// The `--init` model's other tensors (chat template, tokenizer flags), so every model the run
    /// writes keeps them.
    #[serde(default)]
    extras: Vec<ExtraJson>,
}

#[derive(Serialize, Deserialize)]
struct ExtraJson {
    name: String,
    dtype: u8,
    shape: Vec<u64>,
    /// The bytes as hex.
    bytes: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    config: Config,
    tokenizer: TokJson,
    options: TrainOptions,
    /// Steps completed.
    step: u64,
    /// Training examples consumed.
    data_pos: u64,
    /// AdamW updates taken.
    adam_t: u64,
    /// Parameters (and each moment's) element count.
    params: u64,
}

/// The state of a run between two steps.
pub struct Checkpoint {
    pub config: Config,
    pub tokenizer: TokenizerData,
    /// Tensors the model keeps besides its parameters and vocabulary ([`enigma_runtime::extras`]).
    pub extras: Vec<Extra>,
    pub options: TrainOptions,
    pub step: u64,
    pub data_pos: u64,
    pub adam_t: u64,
    /// (P) parameters, then AdamW's moments, each laid out like them
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let t = &self.tokenizer;
        let header = Header {
            config: self.config,
            tokenizer: TokJson {
                pieces: t.pieces.iter().map(|p| hex(p)).collect(),
                scores: t.scores.clone(),
                bos: t.bos,
                eos: t.eos,
                pad: t.pad,
                add_dummy_prefix: t.add_dummy_prefix,
                chat: t.chat.map(|c| [c.user, c.assistant]),
                split: t.split as u8,
                added: t.added.clone(),
                extras: self
                    .extras
                    .iter()
                    .map(|e| ExtraJson {
                        name: e.name.clone(),
                        dtype: e.dtype as u8,
                        shape: e.shape.clone(),
                        bytes: hex(&e.bytes),
                    })
                    .collect(),
            },
            options: self.options.clone(),
            step: self.step,
            data_pos: self.data_pos,
            adam_t: self.adam_t,
            params: self.params.len() as u64,
        };
        let h = serde_json::to_vec(&header)?;
        let mut out = Vec::with_capacity(PRELUDE + h.len() + 12 * self.params.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&h);
        for buf in [&self.params, &self.m, &self.v] {
            for x in buf.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&out[PRELUDE..]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Checkpoint> {
        ensure!(
            b.len() >= PRELUDE && &b[..8] == MAGIC,
            "not an enigma checkpoint"
        );
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let version = u32_at(8);
        ensure!(
            version == VERSION,
            "checkpoint version {version}; this build reads {VERSION}"
        );
        let crc = crc32fast::hash(&b[PRELUDE..]);
        ensure!(
            crc == u32_at(16),
            "the checkpoint is damaged (checksum mismatch)"
        );
        let hl = u32_at(12) as usize;
        let h: Header =
            serde_json::from_slice(b.get(PRELUDE..PRELUDE + hl).context("truncated header")?)
                .context("the checkpoint header is unreadable")?;
        h.config.validate()?;
        let n = h.params as usize;
        let expect = enigma_core::ParamLayout::new(&h.config).total_numel() as usize;
        ensure!(
            n == expect,
            "the checkpoint holds {n} parameters but its config has {expect}"
        );
        let data = &b[PRELUDE + hl..];
        ensure!(
            data.len() == 12 * n,
            "the checkpoint's data is {} bytes, expected {}",
            data.len(),
            12 * n
        );
        let floats = |i: usize| -> Vec<f32> {
            data[4 * n * i..4 * n * (i + 1)]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let t = h.tokenizer;
        let pieces = t
            .pieces
            .iter()
            .map(|p| unhex(p))
            .collect::<Option<Vec<_>>>()
            .context("a tokenizer piece is not hex")?;
        ensure!(
            pieces.len() == h.config.vocab_size as usize && t.scores.len() == pieces.len(),
            "the checkpoint's tokenizer does not match its vocabulary size"
        );
        let split = enigma_core::pretok::Split::from_u8(t.split)
            .context("the checkpoint's tokenizer split is unknown")?;
        let extras = t
            .extras
            .into_iter()
            .map(|e| {
                Some(Extra {
                    dtype: enigma_core::kernels::DType::from_code(e.dtype)?,
                    bytes: unhex(&e.bytes)?,
                    name: e.name,
                    shape: e.shape,
                })
            })
            .collect::<Option<Vec<_>>>()
            .context("a kept tensor of the checkpoint is unreadable")?;
        Ok(Checkpoint {
            config: h.config,
            tokenizer: TokenizerData {
                pieces,
                scores: t.scores,
                bos: t.bos,
                eos: t.eos,
                pad: t.pad,
                add_dummy_prefix: t.add_dummy_prefix,
                chat: t
                    .chat
                    .map(|[user, assistant]| enigma_core::format::ChatTokens { user, assistant }),
                split,
                added: t.added,
            },
            extras,
            options: h.options,
            step: h.step,
            data_pos: h.data_pos,
            adam_t: h.adam_t,
            params: floats(0),
            m: floats(1),
            v: floats(2),
        })
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let b = enigma_runtime::load::read_file(path)?;
        Checkpoint::from_bytes(&b).with_context(|| format!("{}", path.display()))
    }

    /// Saves atomically (`enigma_runtime::fsutil`).
    ///
    /// `ENIGMA_TEST_SLOW_SAVE_MS` (tests only) sleeps that long after each MiB, so a test can kill the
    /// process while a save is under way.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let pause = std::env::var("ENIGMA_TEST_SLOW_SAVE_MS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(std::time::Duration::from_millis);
        atomic_write_with(path, |f| {
            for chunk in bytes.chunks(1 << 20) {
                f.write_all(chunk)?;
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}
