//! CTranslate2's `model.bin` (binary version 6, what `ct2-transformers-converter` writes): a spec name and
//! revision, then named variables (shape, dtype, bytes), then aliases (one name standing for another, as a
//! tied output projection). Every length and offset is checked against the file before it is used, so a
//! truncated or corrupt file is an error naming what is wrong, never a panic.
//!
//! ```text
//! u32 version (6) | str spec | u32 revision | u32 n
//! n × ( str name | u8 ndim | ndim × u32 dim | u8 dtype | u32 nbytes | nbytes of data )
//! u32 n_aliases | n_aliases × ( str alias | str target )
//! str = u16 length (with the NUL) | bytes | NUL
//! ```

use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// The one binary version read (CTranslate2 3.x and 4.x write it).
pub const VERSION: u32 = 6;

/// CTranslate2's `DataType` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ct2Type {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Type {
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Ct2Type::F32,
            1 => Ct2Type::I8,
            2 => Ct2Type::I16,
            3 => Ct2Type::I32,
            4 => Ct2Type::F16,
            5 => Ct2Type::Bf16,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            Ct2Type::I8 => 1,
            Ct2Type::I16 | Ct2Type::F16 | Ct2Type::Bf16 => 2,
            Ct2Type::F32 | Ct2Type::I32 => 4,
        }
    }
}

/// One variable: its shape (empty for a scalar), type and bytes.
#[derive(Clone, Debug)]
pub struct Variable<'a> {
    pub shape: Vec<u64>,
    pub dtype: Ct2Type,
    pub bytes: &'a [u8],
}

impl Variable<'_> {
    /// The values as f32 (float types only; int8 weights with scales are a quantized model, not read).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let b = self.bytes;
        Ok(match self.dtype {
            Ct2Type::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Ct2Type::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Ct2Type::Bf16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            t => bail!(
                "model.bin: variable '{name}' is {t:?}; only float weights are read (convert without --quantization int8)"
            ),
        })
    }

    /// A scalar integer (or boolean) setting.
    pub fn scalar_int(&self, name: &str) -> Result<i64> {
        let b = self.bytes;
        let bad = || anyhow::anyhow!("model.bin: '{name}' is not one integer");
        ensure!(self.shape.iter().product::<u64>() == 1, bad());
        Ok(match self.dtype {
            Ct2Type::I8 => i8::from_le_bytes([b[0]]) as i64,
            Ct2Type::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            Ct2Type::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => return Err(bad()),
        })
    }
}

/// A parsed `model.bin`, borrowing its bytes.
pub struct Ct2Model<'a> {
    pub spec: String,
    pub revision: u32,
    vars: HashMap<String, Variable<'a>>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            bail!(
                "model.bin is truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.b.len()
            );
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let s = self.take(n, what)?;
        let Some((&0, text)) = s.split_last() else {
            bail!(
                "model.bin: {what} at offset {} is not NUL-terminated",
                self.at - n
            );
        };
        String::from_utf8(text.to_vec()).with_context(|| format!("model.bin: {what} is not UTF-8"))
    }
}

impl<'a> Ct2Model<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader { b: bytes, at: 0 };
        let version = r.u32("the version")?;
        ensure!(
            version == VERSION,
            "model.bin: binary version {version}, only {VERSION} is read (is this a CTranslate2 model?)"
        );
        let spec = r.string("the spec name")?;
        let revision = r.u32("the spec revision")?;
        let n = r.u32("the variable count")?;
        let mut vars = HashMap::new();
        for i in 0..n {
            let name = r.string(&format!("variable {i}'s name"))?;
            let ndim = r.u8(&format!("'{name}' rank"))? as usize;
            let mut shape = Vec::with_capacity(ndim);
            for _ in 0..ndim {
                shape.push(r.u32(&format!("'{name}' shape"))? as u64);
            }
            let code = r.u8(&format!("'{name}' dtype"))?;
            let dtype = Ct2Type::from_code(code)
                .with_context(|| format!("model.bin: '{name}' has unknown dtype code {code}"))?;
            let nbytes = r.u32(&format!("'{name}' size"))? as u64;
            let numel = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .context("model.bin: a shape overflows")?;
            ensure!(
                numel.checked_mul(dtype.size() as u64) == Some(nbytes),
                "model.bin: '{name}' has shape {shape:?} of {dtype:?} but {nbytes} bytes"
            );
            let data = r.take(nbytes as usize, &format!("'{name}' data"))?;
            ensure!(
                vars.insert(
                    name.clone(),
                    Variable {
                        shape,
                        dtype,
                        bytes: data
                    }
                )
                .is_none(),
                "model.bin: variable '{name}' appears twice"
            );
        }
        let n_alias = r.u32("the alias count")?;
        for _ in 0..n_alias {
            let alias = r.string("an alias")?;
            let target = r.string("an alias target")?;
            let v = vars
                .get(&target)
                .with_context(|| format!("model.bin: alias '{alias}' names a missing '{target}'"))?
                .clone();
            vars.entry(alias).or_insert(v);
        }
        ensure!(
            r.at == bytes.len(),
            "model.bin: {} bytes after the aliases",
            bytes.len() - r.at
        );
        Ok(Ct2Model {
            spec,
            revision,
            vars,
        })
    }

    pub fn get(&self, name: &str) -> Result<&Variable<'a>> {
        self.vars
            .get(name)
            .with_context(|| format!("model.bin has no variable '{name}'"))
    }

    /// A float variable of exactly `shape`, as f32.
    pub fn f32s(&self, name: &str, shape: &[u64]) -> Result<Vec<f32>> {
        let v = self.get(name)?;
        ensure!(
            v.shape == shape,
            "model.bin: '{name}' has shape {:?}, expected {shape:?}",
            v.shape
        );
        v.to_f32(name)
    }

    pub fn shape(&self, name: &str) -> Result<&[u64]> {
        Ok(&self.get(name)?.shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend(((s.len() + 1) as u16).to_le_bytes());
        out.extend(s.as_bytes());
        out.push(0);
    }

    fn sample() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend(3u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        string(&mut b, "w");
        b.push(2);
        b.extend(1u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        b.push(4);
        b.extend(4u32.to_le_bytes());
        b.extend(half::f16::from_f32(1.5).to_le_bytes());
        b.extend(half::f16::from_f32(-2.0).to_le_bytes());
        string(&mut b, "heads");
        b.push(0);
        b.push(2);
        b.extend(2u32.to_le_bytes());
        b.extend(6i16.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        string(&mut b, "proj");
        string(&mut b, "w");
        b
    }

    #[test]
    fn reads_variables_scalars_and_aliases() {
        let b = sample();
        let m = Ct2Model::parse(&b).unwrap();
        assert_eq!((m.spec.as_str(), m.revision), ("WhisperSpec", 3));
        assert_eq!(m.f32s("proj", &[1, 2]).unwrap(), vec![1.5, -2.0]);
        assert_eq!(m.get("heads").unwrap().scalar_int("heads").unwrap(), 6);
        assert!(m.f32s("w", &[2, 1]).is_err());
        assert!(m.get("nope").is_err());
    }

    #[test]
    fn every_truncation_and_bad_byte_is_an_error() {
        let b = sample();
        for cut in 0..b.len() {
            assert!(Ct2Model::parse(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(Ct2Model::parse(&extra).is_err());
        // Flipping any byte either still parses or is an error; it never panics.
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0xff;
            let _ = Ct2Model::parse(&c);
        }
        let mut v = b.clone();
        v[0] = 5;
        let e = Ct2Model::parse(&v).err().unwrap().to_string();
        assert!(e.contains("binary version 5"), "{e}");
    }
}
