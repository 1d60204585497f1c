//! WAV files and bytes (16-bit mono PCM) through hound, as piper-tts writes them.

use crate::Error;
use std::io::Cursor;
use std::path::Path;

fn spec(sample_rate: u32) -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

/// piper-tts's conversion: clip to [-1, 1], times 32767, truncated toward zero (numpy's `astype(int16)`).
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
        .collect()
}

/// Little-endian 16-bit PCM without a header (`response_format: pcm`).
pub fn pcm_bytes(samples: &[f32]) -> Vec<u8> {
    to_i16(samples)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect()
}

/// A whole WAV file in memory.
pub fn wav_bytes(samples: &[f32], sample_rate: u32) -> Result<Vec<u8>, Error> {
    let mut buf = Cursor::new(Vec::new());
    let err = |e: hound::Error| Error::Audio(format!("writing WAV: {e}"));
    let mut w = hound::WavWriter::new(&mut buf, spec(sample_rate)).map_err(err)?;
    for s in to_i16(samples) {
        w.write_sample(s).map_err(err)?;
    }
    w.finalize().map_err(err)?;
    Ok(buf.into_inner())
}

/// Writes a WAV file atomically (see [`write_atomic`]).
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<(), Error> {
    write_atomic(path, &wav_bytes(samples, sample_rate)?)
}

/// Writes a file atomically: a temporary file beside it, renamed over it when complete, so a reader never sees
/// half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let io = |e: std::io::Error| Error::Audio(format!("{}: {e}", path.display()));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A WAV file's samples as mono f32 in [-1, 1] (channels averaged) and its sample rate.
pub fn read_mono_f32(bytes: &[u8]) -> Result<(Vec<f32>, u32), Error> {
    let err = |e: hound::Error| Error::Audio(format!("not a readable WAV file: {e}"));
    let r = hound::WavReader::new(Cursor::new(bytes)).map_err(err)?;
    let spec = r.spec();
    let ch = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(err)?,
        hound::SampleFormat::Int => {
            let scale = 2f32.powi(i32::from(spec.bits_per_sample.max(1)) - 1);
            r.into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(err)?
        }
    };
    let mono = interleaved
        .chunks(ch)
        .map(|c| c.iter().sum::<f32>() / c.len() as f32)
        .collect();
    Ok((mono, spec.sample_rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_write() {
        let s = vec![0.0, 0.5, -0.5, 1.5, -1.0];
        assert_eq!(to_i16(&s), vec![0, 16383, -16383, 32767, -32767]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.wav");
        write_wav(&p, &s, 22050).unwrap();
        let (back, rate) = read_mono_f32(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(rate, 22050);
        assert_eq!(back.len(), 5);
        assert!((back[1] - 0.5).abs() < 1e-4);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(read_mono_f32(b"RIFF nonsense").is_err());
        assert_eq!(pcm_bytes(&[0.5]), 16383i16.to_le_bytes().to_vec());
    }
}
