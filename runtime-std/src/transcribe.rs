//! Speech to text with a Whisper `.enigma` model ([`enigma_core::whisper`]): audio (16 kHz mono f32) in
//! 30-second windows, each decoded greedily, the next window starting where the last timestamp ended
//! (OpenAI's and faster-whisper's seek rule). Audio comes from a pull function, so a file of hours is
//! transcribed with one window of samples in memory.
//!
//! The log-mel spectrogram is computed per window and its clamp (8 below the maximum) is the window's own;
//! faster-whisper computes one spectrogram of the whole file, so on audio longer than one window the
//! features at window edges and the clamp can differ slightly from its.

use crate::{Error, ModelFile, Pool, Result};
use enigma_core::kernels::Kernels;
use enigma_core::mel::{self, HOP, N_MELS};
use enigma_core::whisper::{self, Buffers, DecodeOptions, Whisper, WINDOW_FRAMES};
use enigma_core::{Exec, Serial, Tokenizer};
use std::path::Path;

/// Samples of a 30-second window.
pub const WINDOW_SAMPLES: usize = WINDOW_FRAMES * HOP;
/// Seconds per timestamp step.
const TIME_STEP: f64 = 0.02;

/// One stretch of speech.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// The text tokens (timestamps excluded).
    pub tokens: Vec<u32>,
}

/// A Whisper model ready to transcribe.
pub struct Transcriber {
    file: ModelFile,
    kernels: &'static Kernels,
    tables: Vec<f32>,
    pool: Option<Pool>,
}

impl Transcriber {
    pub fn open(path: impl AsRef<Path>, kernels: &'static Kernels) -> Result<Self> {
        Self::from_file(ModelFile::open(path)?, kernels)
    }

    pub fn from_file(file: ModelFile, kernels: &'static Kernels) -> Result<Self> {
        {
            let parsed = file.parse()?;
            if !whisper::is_whisper(&parsed) {
                return Err(Error::Invalid(format!(
                    "{} is not a speech-recognition (Whisper) model",
                    file.path().display()
                )));
            }
            Whisper::from_file(&parsed, kernels)?;
            Tokenizer::from_file(&parsed)?;
        }
        let mut tables = vec![0.0; mel::TABLES_LEN];
        mel::fill_tables(&mut tables)?;
        Ok(Transcriber {
            file,
            kernels,
            tables,
            pool: None,
        })
    }

    /// Runs the products on `threads` threads (1: the caller's alone).
    pub fn with_threads(mut self, threads: usize) -> Result<Self> {
        self.pool = (threads > 1).then(|| Pool::new(threads)).transpose()?;
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The text of `tokens` (special and timestamp tokens left out).
    pub fn text(&self, tokens: &[u32]) -> Result<String> {
        let parsed = self.file.parse()?;
        let w = Whisper::from_file(&parsed, self.kernels)?;
        let tok = Tokenizer::from_file(&parsed)?;
        let mut bytes = Vec::new();
        for &t in tokens.iter().filter(|&&t| t < w.meta.eot) {
            bytes.extend_from_slice(tok.piece(t));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The log-mel frames of one window of samples (at most [`WINDOW_SAMPLES`]), zero-padded to 3000
    /// frames as faster-whisper pads; returns the frames and how many hold audio.
    pub fn window_features(&self, samples: &[f32]) -> Result<(Vec<f32>, usize)> {
        let n = mel::frames(samples.len());
        let mut out = vec![0.0; n * N_MELS];
        let mut scratch = vec![0.0; mel::SCRATCH_LEN];
        mel::log_mel(self.kernels, &self.tables, samples, &mut out, &mut scratch)?;
        let content = (samples.len() / HOP).min(WINDOW_FRAMES);
        out.resize(WINDOW_FRAMES * N_MELS, 0.0);
        Ok((out, content))
    }

    /// Encodes one window of features and returns the encoder output `(1500, D)` (for reference tests).
    pub fn encoder_output(&self, features: &[f32]) -> Result<Vec<f32>> {
        let parsed = self.file.parse()?;
        let w = Whisper::from_file(&parsed, self.kernels)?;
        let mut bufs = Bufs::new(&w);
        let mut b = bufs.view();
        b.enc[..features.len()].copy_from_slice(features);
        w.encode(self.exec(), &mut b)?;
        Ok(w.encoder_output(&b).to_vec())
    }

    fn exec(&self) -> &dyn Exec {
        match &self.pool {
            Some(p) => p,
            None => &Serial,
        }
    }

    /// Transcribes audio pulled from `read`, which fills the slice it is given with the next samples and
    /// returns how many (0 at the end). Each finished segment goes to `sink` as soon as it is known.
    pub fn transcribe(
        &self,
        read: &mut dyn FnMut(&mut [f32]) -> Result<usize>,
        opts: &DecodeOptions,
        sink: &mut dyn FnMut(Segment) -> Result<()>,
    ) -> Result<()> {
        let parsed = self.file.parse()?;
        let w = Whisper::from_file(&parsed, self.kernels)?;
        let tok = Tokenizer::from_file(&parsed)?;
        let text_of = |tokens: &[u32]| {
            let mut bytes = Vec::new();
            for &t in tokens.iter().filter(|&&t| t < w.meta.eot) {
                bytes.extend_from_slice(tok.piece(t));
            }
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let mut bufs = Bufs::new(&w);
        let tb = w.meta.timestamp_begin;
        // `window` holds samples from `base` (a multiple of HOP) on; `ended` once `read` returned 0.
        let mut window: Vec<f32> = Vec::with_capacity(WINDOW_SAMPLES);
        let mut base = 0usize;
        let mut ended = false;
        let mut tokens = vec![0u32; opts.max_tokens];
        loop {
            while !ended && window.len() < WINDOW_SAMPLES {
                let have = window.len();
                window.resize(WINDOW_SAMPLES, 0.0);
                let got = read(&mut window[have..])?;
                window.truncate(have + got);
                ended = got == 0;
            }
            // Less than a frame left: nothing more to hear.
            if window.len() < HOP {
                break;
            }
            let (features, content) = self.window_features(&window)?;
            let mut b = bufs.view();
            b.enc[..features.len()].copy_from_slice(&features);
            w.encode(self.exec(), &mut b)?;
            let dec = w.greedy(self.exec(), opts, &mut b, &mut tokens)?;
            let n = if dec.is_silence() { 0 } else { dec.tokens };
            let toks = &tokens[..n];
            let offset = base as f64 / mel::SAMPLE_RATE as f64;
            let window_secs = content as f64 * HOP as f64 / mel::SAMPLE_RATE as f64;
            let mut advance = content;
            let mut emit = |s: f64, e: f64, t: &[u32]| -> Result<()> {
                let text_tokens: Vec<u32> = t.iter().copied().filter(|&x| x < w.meta.eot).collect();
                if text_tokens.is_empty() {
                    return Ok(());
                }
                sink(Segment {
                    start: offset + s,
                    end: offset + e,
                    text: text_of(&text_tokens),
                    tokens: text_tokens,
                })
            };
            if !opts.timestamps {
                emit(0.0, window_secs, toks)?;
            } else {
                let is_ts: Vec<bool> = toks.iter().map(|&t| t >= tb).collect();
                let single_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1];
                let mut slices: Vec<usize> = (1..n).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();
                let secs = |t: u32| (t - tb) as f64 * TIME_STEP;
                if !slices.is_empty() {
                    if single_ending {
                        slices.push(n);
                    }
                    let mut last = 0;
                    for &cur in &slices {
                        let part = &toks[last..cur];
                        let (s, e) = (part[0], part[part.len() - 1]);
                        if s >= tb && e >= tb {
                            emit(secs(s), secs(e), part)?;
                        }
                        last = cur;
                    }
                    if !single_ending {
                        let pos = (toks[last - 1].saturating_sub(tb)) as usize * 2;
                        // A window that made no progress moves on whole, so a loop cannot stall.
                        advance = if pos > 0 { pos.min(content) } else { content };
                    }
                } else {
                    let mut dur = window_secs;
                    if let Some(&t) = toks.iter().rev().find(|&&t| t >= tb) {
                        if t != tb {
                            dur = secs(t);
                        }
                    }
                    emit(0.0, dur, toks)?;
                }
            }
            let drop = (advance * HOP).min(window.len());
            window.drain(..drop);
            base += drop;
            if ended && window.len() < HOP {
                break;
            }
            if advance == 0 {
                break;
            }
        }
        Ok(())
    }

    /// [`Transcriber::transcribe`] of samples in memory, the segments collected.
    pub fn transcribe_samples(
        &self,
        samples: &[f32],
        opts: &DecodeOptions,
    ) -> Result<Vec<Segment>> {
        let mut at = 0;
        let mut read = |buf: &mut [f32]| -> Result<usize> {
            let n = buf.len().min(samples.len() - at);
            buf[..n].copy_from_slice(&samples[at..at + n]);
            at += n;
            Ok(n)
        };
        let mut segs = Vec::new();
        self.transcribe(&mut read, opts, &mut |s| {
            segs.push(s);
            Ok(())
        })?;
        Ok(segs)
    }
}

/// The buffers of [`Buffers`], owned.
struct Bufs {
    parts: [Vec<f32>; 5],
}

impl Bufs {
    fn new(w: &Whisper<'_>) -> Self {
        Bufs {
            parts: w.buffer_lens().map(|n| vec![0.0; n]),
        }
    }
    fn view(&mut self) -> Buffers<'_> {
        let [enc, cross, kv, dec, logits] = &mut self.parts;
        Buffers {
            enc,
            cross,
            kv,
            dec,
            logits,
        }
    }
}
