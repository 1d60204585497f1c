//! Whisper's log-mel spectrogram: 16 kHz audio, a 400-point periodic Hann window every 160 samples
//! (centred frames, reflect padding at the ends), the power of the 201 one-sided frequencies, 80 Slaney
//! mel bands (librosa's `filters.mel(sr=16000, n_fft=400, n_mels=80)`, computed here), `log10` clamped
//! to 1e-10 and to 8 below the clip's maximum, then `(x + 4) / 4`.
//!
//! As `faster-whisper` does, the audio is followed by 160 zero samples and the last frame is dropped, so
//! `n` samples make `(n + 160) / 160` frames. The transform is a DFT as two matrix products against tables
//! with the window folded in (one [`MelTables`] allocation of the caller's); at 400 points, run through the
//! SIMD `matmul_f32`, that costs under a millisecond per second of audio, and it keeps one code path.

use crate::{Error, Result};
use enigma_kernels::Kernels;

pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const N_FREQ: usize = N_FFT / 2 + 1;
pub const N_MELS: usize = 80;
/// Frames computed per block (bounds the scratch whatever the audio's length).
const BLOCK: usize = 64;

/// `f32`s of the tables: cosine and sine rows (window folded in), then the mel filters.
pub const TABLES_LEN: usize = 2 * N_FREQ * N_FFT + N_MELS * N_FREQ;
/// `f32`s of [`log_mel`]'s scratch.
pub const SCRATCH_LEN: usize = BLOCK * (N_FFT + 3 * N_FREQ);

/// Frames `n` samples make.
pub fn frames(n: usize) -> usize {
    (n + HOP) / HOP
}

fn hz_to_mel(f: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    if f < 1000.0 {
        f / F_SP
    } else {
        15.0 + libm::log(f / 1000.0) / (libm::log(6.4) / 27.0)
    }
}

fn mel_to_hz(m: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    if m < 15.0 {
        m * F_SP
    } else {
        1000.0 * libm::exp((libm::log(6.4) / 27.0) * (m - 15.0))
    }
}

/// Fills `t` ([`TABLES_LEN`]) with the DFT rows and the Slaney-normalised mel filter bank.
pub fn fill_tables(t: &mut [f32]) -> Result<()> {
    if t.len() != TABLES_LEN {
        return Err(Error::BufferTooSmall {
            what: "mel tables",
            needed: TABLES_LEN,
            found: t.len(),
        });
    }
    let (cos, rest) = t.split_at_mut(N_FREQ * N_FFT);
    let (sin, filters) = rest.split_at_mut(N_FREQ * N_FFT);
    let tau = 2.0 * core::f64::consts::PI;
    for f in 0..N_FREQ {
        for j in 0..N_FFT {
            let w = 0.5 - 0.5 * libm::cos(tau * j as f64 / N_FFT as f64);
            // (f·j) mod N keeps the angle small, so the f64 trig stays exact to f32.
            let a = tau * ((f * j) % N_FFT) as f64 / N_FFT as f64;
            cos[f * N_FFT + j] = (w * libm::cos(a)) as f32;
            sin[f * N_FFT + j] = (w * libm::sin(a)) as f32;
        }
    }
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    let pt = |i: usize| mel_to_hz(lo + (hi - lo) * i as f64 / (N_MELS + 1) as f64);
    for m in 0..N_MELS {
        let (a, b, c) = (pt(m), pt(m + 1), pt(m + 2));
        let enorm = 2.0 / (c - a);
        for f in 0..N_FREQ {
            let hz = f as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
            let lower = (hz - a) / (b - a);
            let upper = (c - hz) / (c - b);
            filters[m * N_FREQ + f] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    Ok(())
}

/// Sample `i` of the audio followed by [`HOP`] zeros, reflected at both ends as numpy's `reflect` pad.
fn sample(audio: &[f32], i: isize) -> f32 {
    let len = (audio.len() + HOP) as isize;
    let mut i = i;
    if i < 0 {
        i = -i;
    }
    if i >= len {
        i = 2 * (len - 1) - i;
    }
    audio.get(i.max(0) as usize).copied().unwrap_or(0.0)
}

/// The log-mel spectrogram of `audio` (16 kHz mono) into `out (frames, 80)`, time-major;
/// `out.len()` must be `frames(audio.len()) * 80`. Returns the frames written.
pub fn log_mel(
    k: &Kernels,
    tables: &[f32],
    audio: &[f32],
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<usize> {
    let n = frames(audio.len());
    if tables.len() != TABLES_LEN || out.len() != n * N_MELS || scratch.len() < SCRATCH_LEN {
        return Err(Error::BufferTooSmall {
            what: "log-mel tables, output or scratch",
            needed: n * N_MELS,
            found: out.len(),
        });
    }
    let (cos, rest) = tables.split_at(N_FREQ * N_FFT);
    let (sin, filters) = rest.split_at(N_FREQ * N_FFT);
    let (x, rest) = scratch.split_at_mut(BLOCK * N_FFT);
    let (re, rest) = rest.split_at_mut(BLOCK * N_FREQ);
    let (im, _) = rest.split_at_mut(BLOCK * N_FREQ);
    let mut t0 = 0;
    while t0 < n {
        let b = BLOCK.min(n - t0);
        for r in 0..b {
            let start = ((t0 + r) * HOP) as isize - (N_FFT / 2) as isize;
            for (j, v) in x[r * N_FFT..(r + 1) * N_FFT].iter_mut().enumerate() {
                *v = sample(audio, start + j as isize);
            }
        }
        (k.matmul_f32)(&mut re[..b * N_FREQ], cos, &x[..b * N_FFT], b);
        (k.matmul_f32)(&mut im[..b * N_FREQ], sin, &x[..b * N_FFT], b);
        for (r, i) in re[..b * N_FREQ].iter_mut().zip(&im[..b * N_FREQ]) {
            *r = *r * *r + *i * *i;
        }
        (k.matmul_f32)(
            &mut out[t0 * N_MELS..(t0 + b) * N_MELS],
            filters,
            &re[..b * N_FREQ],
            b,
        );
        t0 += b;
    }
    let mut max = f32::NEG_INFINITY;
    for v in out.iter_mut() {
        *v = libm::log10f(v.max(1e-10));
        max = max.max(*v);
    }
    for v in out.iter_mut() {
        *v = (v.max(max - 8.0) + 4.0) / 4.0;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    #[test]
    fn filters_match_librosa_shape_and_a_tone_lands_in_its_band() {
        let mut t = vec![0.0; TABLES_LEN];
        fill_tables(&mut t).unwrap();
        let filters = &t[2 * N_FREQ * N_FFT..];
        // librosa's slaney filters for Whisper: band 0 peaks at bin 1 with weight 0.02486 (mel_filters.npz).
        assert!((filters[1] - 0.024_862).abs() < 1e-4, "{}", filters[1]);
        assert!(filters.iter().all(|v| *v >= 0.0));
        // A 1 kHz tone: the loudest band is the one whose filter weighs bin 25 (1000 Hz) most.
        let k = enigma_kernels::kernels();
        let audio: std::vec::Vec<f32> = (0..16000)
            .map(|i| libm::sinf(2.0 * core::f32::consts::PI * 1000.0 * i as f32 / 16000.0))
            .collect();
        let n = frames(audio.len());
        assert_eq!(n, 101);
        let mut out = vec![0.0; n * N_MELS];
        let mut s = vec![0.0; SCRATCH_LEN];
        log_mel(k, &t, &audio, &mut out, &mut s).unwrap();
        let row = &out[50 * N_MELS..51 * N_MELS];
        let best = (0..N_MELS)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap();
        let want = (0..N_MELS)
            .max_by(|&a, &b| filters[a * N_FREQ + 25].total_cmp(&filters[b * N_FREQ + 25]))
            .unwrap();
        assert_eq!(best, want);
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
