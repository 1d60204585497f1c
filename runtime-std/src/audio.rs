//! WAV input for speech recognition, read as a stream: any channel count (mixed down to mono), 8/16/24/32
//! bit integer or 32-bit float samples, any rate (converted to 16 kHz by linear interpolation, with no
//! low-pass filter first: fine for speech recorded at 16 to 48 kHz, lossy for high-frequency content).
//! Nothing but the current few samples is held, so hours of audio take no more memory than seconds.

use crate::{Error, Result};
use std::io::Read;

/// Whisper's rate.
pub const TARGET_RATE: u32 = 16_000;

/// A WAV stream producing 16 kHz mono f32 samples.
pub struct WavSource<R: Read> {
    reader: hound::WavReader<R>,
    channels: usize,
    rate: u32,
    int_scale: Option<f32>,
    /// Mono input samples not consumed yet; `pos` is the next output's position in them.
    pending: std::collections::VecDeque<f32>,
    pos: f64,
    step: f64,
    frame: Vec<f32>,
    done: bool,
}

impl<R: Read> WavSource<R> {
    pub fn new(r: R) -> Result<Self> {
        let reader = hound::WavReader::new(r)
            .map_err(|e| Error::Invalid(format!("not a WAV file (RIFF/WAVE PCM): {e}")))?;
        let spec = reader.spec();
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(Error::Invalid(
                "WAV file: zero channels or a zero sample rate".into(),
            ));
        }
        let int_scale = match spec.sample_format {
            hound::SampleFormat::Int => {
                if !(1..=32).contains(&spec.bits_per_sample) {
                    return Err(Error::Invalid(format!(
                        "WAV file: {} bits per sample",
                        spec.bits_per_sample
                    )));
                }
                Some(1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32)
            }
            hound::SampleFormat::Float => None,
        };
        Ok(WavSource {
            channels: spec.channels as usize,
            rate: spec.sample_rate,
            int_scale,
            pending: Default::default(),
            pos: 0.0,
            step: spec.sample_rate as f64 / TARGET_RATE as f64,
            frame: Vec::with_capacity(spec.channels as usize),
            done: false,
            reader,
        })
    }

    /// The file's own sample rate and channel count.
    pub fn format(&self) -> (u32, usize) {
        (self.rate, self.channels)
    }

    /// Whether samples are converted to 16 kHz.
    pub fn resampled(&self) -> bool {
        self.rate != TARGET_RATE
    }

    /// The next mono input sample (channels averaged), or None at the end.
    fn next_mono(&mut self) -> Result<Option<f32>> {
        self.frame.clear();
        for _ in 0..self.channels {
            let v = match self.int_scale {
                Some(scale) => self
                    .reader
                    .samples::<i32>()
                    .next()
                    .map(|s| s.map(|v| v as f32 * scale)),
                None => self.reader.samples::<f32>().next(),
            };
            match v {
                Some(Ok(v)) => self.frame.push(v),
                Some(Err(e)) => return Err(Error::Invalid(format!("WAV file: {e}"))),
                None => break,
            }
        }
        if self.frame.len() < self.channels {
            // A trailing partial frame is dropped.
            return Ok(None);
        }
        Ok(Some(self.frame.iter().sum::<f32>() / self.channels as f32))
    }

    /// Fills `out` with the next 16 kHz samples; returns how many (0 at the end).
    pub fn read(&mut self, out: &mut [f32]) -> Result<usize> {
        let mut n = 0;
        while n < out.len() {
            let i = self.pos.floor() as usize;
            while !self.done && self.pending.len() < i + 2 {
                match self.next_mono()? {
                    Some(v) => self.pending.push_back(v),
                    None => self.done = true,
                }
            }
            let Some(&a) = self.pending.get(i) else { break };
            let b = self.pending.get(i + 1).copied().unwrap_or(a);
            let frac = (self.pos - i as f64) as f32;
            out[n] = a + (b - a) * frac;
            n += 1;
            self.pos += self.step;
            let used = (self.pos.floor() as usize).min(self.pending.len());
            self.pending.drain(..used);
            self.pos -= used as f64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let mut c = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut c, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        c.into_inner()
    }

    fn all(bytes: &[u8]) -> Vec<f32> {
        let mut s = WavSource::new(bytes).unwrap();
        let mut out = Vec::new();
        let mut buf = [0.0; 7];
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn mono_16k_passes_through_and_stereo_is_mixed() {
        let m = all(&wav(16000, 1, &[0, 16384, -16384, 32767]));
        assert_eq!(m, vec![0.0, 0.5, -0.5, 32767.0 / 32768.0]);
        let s = all(&wav(16000, 2, &[16384, 0, -16384, -16384]));
        assert_eq!(s, vec![0.25, -0.5]);
    }

    #[test]
    fn other_rates_are_interpolated_to_16k() {
        // 32 kHz: every second sample. 8 kHz: midpoints between.
        let x: Vec<i16> = (0..64).map(|i| i * 100).collect();
        let d = all(&wav(32000, 1, &x));
        assert_eq!(d.len(), 32);
        assert!((d[3] - 600.0 / 32768.0).abs() < 1e-6);
        let u = all(&wav(8000, 1, &x));
        assert_eq!(u.len(), 128);
        assert!((u[1] - 50.0 / 32768.0).abs() < 1e-6, "{}", u[1]);
    }

    #[test]
    fn not_a_wav_is_one_clear_error() {
        let e = WavSource::new(&b"ID3\x04 this is an mp3"[..])
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a WAV file"), "{e}");
    }
}
