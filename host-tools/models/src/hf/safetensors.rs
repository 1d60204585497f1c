//! The safetensors container: a zero-copy parser over the bytes of one file (an mmap).
//!
//! Layout (Hugging Face's `safetensors` format):
//!
//! ```text
//! header_len:u64 LE   header: header_len bytes of UTF-8 JSON   data
//! header = { "__metadata__": {str: str}?, NAME: {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, ... }
//! ```
//!
//! Offsets are relative to the start of the data. Every length, offset and `dtype size x shape` product is
//! checked, with checked arithmetic, against the bytes really there before a tensor is handed out, and no
//! two tensors may share bytes; a tensor is a borrowed slice, read with `from_le_bytes`, so alignment does
//! not matter. Written here rather than taken from the `safetensors` crate for the same reasons as the GGUF
//! reader (docs/DESIGN.md): every error is one line naming the tensor, and the `safetensors` fuzz target
//! holds this parser to never panicking.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// The element types read; the others (integers, f8, f64) are named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

impl Dtype {
    fn parse(name: &str) -> Option<Dtype> {
        Some(match name {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            _ => return None,
        })
    }

    pub fn size(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
        }
    }
}

/// One tensor, its bytes borrowed from the file.
#[derive(Clone, Debug)]
pub struct Tensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub bytes: &'a [u8],
}

impl Tensor<'_> {
    pub fn numel(&self) -> u64 {
        // Checked when parsed: the product fits, since its bytes are in the file.
        self.shape.iter().product()
    }

    /// The values, widened to f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

/// A parsed file: its tensors in header order (names unique: JSON objects are read with the last
/// duplicate key winning, as serde_json does).
#[derive(Debug)]
pub struct SafeTensors<'a> {
    pub tensors: Vec<Tensor<'a>>,
}

/// A JSON number that is a whole, non-negative count.
fn count(v: &Value, what: &str) -> Result<u64> {
    v.as_u64()
        .with_context(|| format!("{what} is {v}, not a whole number >= 0"))
}

impl<'a> SafeTensors<'a> {
    pub fn parse(data: &'a [u8]) -> Result<SafeTensors<'a>> {
        let head: [u8; 8] = data
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .context("too short to be a safetensors file (no 8-byte header length)")?;
        let header_len = u64::from_le_bytes(head);
        let body = &data[8..];
        let header_len = usize::try_from(header_len)
            .ok()
            .filter(|&n| n <= body.len())
            .with_context(|| {
                format!(
                    "the header length {header_len} runs past the end of the file ({} bytes)",
                    data.len()
                )
            })?;
        let (header, bytes) = body.split_at(header_len);
        let header: Value = serde_json::from_slice(header)
            .map_err(|e| anyhow::anyhow!("the header is not JSON: {e}"))?;
        let Value::Object(entries) = header else {
            bail!("the header is not a JSON object");
        };
        let mut tensors = Vec::new();
        let mut spans: Vec<(u64, u64, usize)> = Vec::new();
        let mut skipped: Vec<(u64, u64, String)> = Vec::new();
        for (name, info) in &entries {
            if name == "__metadata__" {
                continue;
            }
            let field = |key: &str| {
                info.get(key)
                    .with_context(|| format!("tensor '{name}' has no {key}"))
            };
            let dtype_name = field("dtype")?
                .as_str()
                .with_context(|| format!("tensor '{name}': dtype is not a string"))?;
            // Integer tensors are never weights (BERT's `position_ids` buffer is I64): their bytes are
            // checked like any tensor's, then left out.
            let int_size = match dtype_name {
                "I64" | "U64" => Some(8),
                "I32" | "U32" => Some(4),
                "I16" | "U16" => Some(2),
                "I8" | "U8" | "BOOL" => Some(1),
                _ => None,
            };
            let dtype = match (Dtype::parse(dtype_name), int_size) {
                (Some(d), _) => Some(d),
                (None, Some(_)) => None,
                (None, None) => {
                    bail!("tensor '{name}' is {dtype_name}: only F32, F16 and BF16 are read")
                }
            };
            let size = dtype.map_or(int_size.unwrap_or(1), Dtype::size);
            let shape = field("shape")?
                .as_array()
                .with_context(|| format!("tensor '{name}': shape is not an array"))?
                .iter()
                .map(|d| count(d, &format!("a dimension of tensor '{name}'")))
                .collect::<Result<Vec<u64>>>()?;
            let offsets = field("data_offsets")?
                .as_array()
                .filter(|a| a.len() == 2)
                .with_context(|| format!("tensor '{name}': data_offsets is not [begin, end]"))?;
            let begin = count(&offsets[0], &format!("the begin offset of tensor '{name}'"))?;
            let end = count(&offsets[1], &format!("the end offset of tensor '{name}'"))?;
            let want = shape
                .iter()
                .try_fold(size, |n, &d| n.checked_mul(d))
                .with_context(|| format!("tensor '{name}': shape {shape:?} overflows"))?;
            ensure!(
                begin <= end && end <= bytes.len() as u64,
                "tensor '{name}': data_offsets [{begin}, {end}] are outside the {} bytes of data",
                bytes.len()
            );
            ensure!(
                end - begin == want,
                "tensor '{name}': {} bytes of data for a {dtype_name} tensor of shape {shape:?} ({want} bytes)",
                end - begin
            );
            let Some(dtype) = dtype else {
                skipped.push((begin, end, name.clone()));
                continue;
            };
            spans.push((begin, end, tensors.len()));
            tensors.push(Tensor {
                name: name.clone(),
                dtype,
                shape,
                // In range: end <= bytes.len() was checked, and both fit in usize since bytes is a slice.
                bytes: &bytes[begin as usize..end as usize],
            });
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            let ((_, end, a), (begin, _, b)) = (w[0], w[1]);
            ensure!(
                begin >= end,
                "tensors '{}' and '{}' share bytes of the data",
                tensors[a].name,
                tensors[b].name
            );
        }
        for (begin, end, name) in &skipped {
            if let Some(t) = tensors.iter().find(|t| {
                let b = t.bytes.as_ptr() as usize - bytes.as_ptr() as usize;
                (*begin as usize) < b + t.bytes.len() && b < *end as usize
            }) {
                bail!("tensors '{name}' and '{}' share bytes of the data", t.name);
            }
        }
        Ok(SafeTensors { tensors })
    }

    pub fn get(&self, name: &str) -> Option<&Tensor<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file of `tensors` (name, dtype, shape, values as raw bytes), laid out back to back.
    pub fn file(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            header.insert(
                (*name).into(),
                serde_json::json!({"dtype": dtype, "shape": shape,
                    "data_offsets": [data.len(), data.len() + bytes.len()]}),
            );
            data.extend_from_slice(bytes);
        }
        let header = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(data);
        out
    }

    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn err(bytes: &[u8]) -> String {
        let e = format!("{:#}", SafeTensors::parse(bytes).unwrap_err());
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn reads_each_dtype() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [half::f16::from_f32(0.5), half::f16::from_f32(3.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [half::bf16::from_f32(-1.0), half::bf16::from_f32(8.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = file(&[
            ("a", "F32", vec![2], f32s),
            ("b", "F16", vec![1, 2], f16s),
            ("c", "BF16", vec![2, 1], bf16s),
        ]);
        let st = SafeTensors::parse(&bytes).unwrap();
        assert_eq!(st.get("a").unwrap().to_f32(), [1.5, -2.0]);
        assert_eq!(st.get("b").unwrap().to_f32(), [0.5, 3.0]);
        assert_eq!(st.get("c").unwrap().to_f32(), [-1.0, 8.0]);
        assert_eq!(st.get("c").unwrap().shape, [2, 1]);
    }

    #[test]
    fn hostile_headers_are_one_line_errors() {
        assert!(err(b"abc").contains("too short"));
        assert!(err(&u64::MAX.to_le_bytes()).contains("runs past the end"));
        assert!(err(&raw("{not json", &[])).contains("not JSON"));
        assert!(err(&raw("[1, 2]", &[])).contains("not a JSON object"));
        let e = err(&raw(
            r#"{"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("only F32, F16 and BF16"), "{e}");
        // Integer buffers are checked, then left out; one overlapping a weight is still refused.
        let ok = raw(
            r#"{"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}"#,
            &[0; 12],
        );
        let st = SafeTensors::parse(&ok).expect("an I64 buffer beside a weight");
        assert_eq!(st.tensors.len(), 1);
        assert!(err(&raw(
            r#"{"ids": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}"#,
            &[0; 8],
        ))
        .contains("outside"));
        assert!(err(&raw(
            r#"{"ids": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            &[0; 8],
        ))
        .contains("share bytes"));
        let e = err(&raw(
            r#"{"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("overflows"), "{e}");
        let e = err(&raw(
            r#"{"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("outside the 4 bytes"), "{e}");
        let e = err(&raw(
            r#"{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("4 bytes of data for a F32 tensor"), "{e}");
        let e = err(&raw(
            r#"{"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("not a whole number"), "{e}");
        let e = err(&raw(
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("share bytes"), "{e}");
        let e = err(&raw(
            r#"{"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("outside"), "{e}");
        let e = err(&raw(r#"{"t": {"dtype": "F32", "shape": [1]}}"#, &[0; 4]));
        assert!(e.contains("no data_offsets"), "{e}");
    }

    #[test]
    fn misaligned_data_reads_the_same() {
        // One byte of F16 first puts the F32 tensor at offset 2: legal, and read byte-wise.
        let bytes = raw(
            r#"{"h": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}, "f": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}"#,
            &[0, 0x3c, 0, 0, 0x80, 0x3f],
        );
        let st = SafeTensors::parse(&bytes).unwrap();
        assert_eq!(st.get("h").unwrap().to_f32(), [1.0]);
        assert_eq!(st.get("f").unwrap().to_f32(), [1.0]);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = file(&[
            ("a", "F32", vec![3], vec![1; 12]),
            ("b", "BF16", vec![2, 2], vec![2; 8]),
        ]);
        SafeTensors::parse(&bytes).unwrap();
        for cut in 0..bytes.len() {
            let e = format!("{:#}", SafeTensors::parse(&bytes[..cut]).unwrap_err());
            assert!(!e.contains('\n'), "cut {cut}: {e}");
        }
    }

    proptest! {
        /// Random bytes, and a valid file with random bytes written over it, never panic; what parses
        /// has every tensor inside the file.
        #[test]
        fn hostile_bytes_never_panic(
            junk in proptest::collection::vec(any::<u8>(), 0..256),
            at in 0usize..400,
            with in proptest::collection::vec(any::<u8>(), 1..8),
        ) {
            let _ = SafeTensors::parse(&junk);
            let mut bytes = file(&[
                ("x", "F32", vec![2, 3], vec![7; 24]),
                ("y", "F16", vec![5], vec![9; 10]),
            ]);
            let at = at % bytes.len();
            for (i, b) in with.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(at + i) {
                    *slot = *b;
                }
            }
            if let Ok(st) = SafeTensors::parse(&bytes) {
                for t in &st.tensors {
                    prop_assert_eq!(t.to_f32().len() as u64, t.numel());
                }
            }
        }

        /// Any counts in the header (huge shapes, offsets near u64::MAX) are refused or fit the data.
        #[test]
        fn hostile_counts_are_checked(
            dims in proptest::collection::vec(any::<u64>(), 0..4),
            begin in any::<u64>(),
            end in any::<u64>(),
        ) {
            let header = serde_json::json!({"t": {"dtype": "BF16", "shape": dims, "data_offsets": [begin, end]}});
            let bytes = raw(&header.to_string(), &[0; 64]);
            match SafeTensors::parse(&bytes) {
                Ok(st) => prop_assert!(st.tensors[0].bytes.len() <= 64),
                Err(e) => {
                    let line = format!("{e:#}");
                    prop_assert!(!line.contains('\n'), "{}", line);
                }
            }
        }
    }
}
