//! Converting a model's weight matrices to another dtype: `enigma quantize` and `import --quantize`.
//!
//! Norms stay f32 (they are tiny and precision-sensitive). A matrix whose rows are not a whole number of
//! 32-element blocks cannot be block-quantized; it stays f32 and the report says so, as llama.cpp does.

use crate::writer::{ModelWriter, TokenizerData};
use crate::{Error, Result};
use enigma_core::config::{Config, ParamLayout, TensorSpec, CLASSIFIER, TOKEN_EMBEDDING};
use enigma_core::kernels::{self as k, BlockQ4_0, BlockQ8_0, DType};
use enigma_core::{EnigmaFile, Tokenizer};

/// Parses `f32|f16|bf16|q8_0|q4_0`.
pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        "q8_0" => Ok(DType::Q8_0),
        "q4_0" => Ok(DType::Q4_0),
        other => Err(Error::Invalid(format!(
            "unknown weight type '{other}' (known: f32, f16, bf16, q8_0, q4_0)"
        ))),
    }
}

/// Refuses weights that are NaN or infinite, naming the tensor: a model holding one computes NaN logits
/// for every token, so writing it only moves the failure to whoever runs it.
pub fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Invalid(format!(
            "tensor '{name}' element {i} is {}, not a finite number; refusing to write it",
            data[i]
        ))),
        None => Ok(()),
    }
}

/// [`check_finite`] over every tensor of a flat parameter buffer laid out by [`ParamLayout`].
pub fn check_params_finite(config: &Config, params: &[f32]) -> Result<()> {
    let mut at = 0usize;
    for spec in ParamLayout::new(config).iter() {
        let n = spec.numel() as usize;
        check_finite(spec.name, params.get(at..at + n).unwrap_or_default())?;
        at += n;
    }
    Ok(())
}

/// The little-endian bytes of `data` stored as `dtype`. A finite f32 can still overflow a narrower type
/// (f16 tops out at 65504, a block's f16 scale at 127 times that): that is refused too.
pub fn encode(dtype: DType, data: &[f32]) -> Result<Vec<u8>> {
    let blocks = data.len() / k::QK;
    let overflow = || {
        Err(Error::Invalid(format!(
            "a value of magnitude {} does not fit in {}",
            data.iter().fold(0f32, |m, v| m.max(v.abs())),
            dtype.name()
        )))
    };
    Ok(match dtype {
        DType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => {
            let mut out = vec![k::f16::ZERO; data.len()];
            k::quantize_f16(data, &mut out);
            if out.iter().any(|v| !v.is_finite()) {
                return overflow();
            }
            out.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::BF16 => {
            let mut out = vec![k::bf16::ZERO; data.len()];
            k::quantize_bf16(data, &mut out);
            if out.iter().any(|v| !v.is_finite()) {
                return overflow();
            }
            out.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::Q8_0 if data.len().is_multiple_of(k::QK) => {
            let mut out = vec![BlockQ8_0::ZERO; blocks];
            k::quantize_q8_0(data, &mut out);
            if out.iter().any(|b| !b.scale().is_finite()) {
                return overflow();
            }
            out.iter()
                .flat_map(|b| {
                    b.d.to_le_bytes()
                        .into_iter()
                        .chain(b.qs.iter().map(|q| *q as u8))
                })
                .collect()
        }
        DType::Q4_0 if data.len().is_multiple_of(k::QK) => {
            let mut out = vec![BlockQ4_0::ZERO; blocks];
            k::quantize_q4_0(data, &mut out);
            if out.iter().any(|b| !b.scale().is_finite()) {
                return overflow();
            }
            out.iter()
                .flat_map(|b| b.d.to_le_bytes().into_iter().chain(b.qs))
                .collect()
        }
        other => {
            return Err(Error::Invalid(format!(
                "{} values cannot be stored as {}",
                data.len(),
                other.name()
            )))
        }
    })
}

/// The dtype a parameter is stored as when the model's matrices go to `to`.
///
/// With q4_0, the embedding and classifier stay at q8_0: every logit goes through the classifier, and
/// 4 bits there cost far more accuracy than anywhere else (llama.cpp keeps its output matrix at a higher
/// precision in its 4-bit schemes for the same reason).
pub fn dtype_for(spec: &TensorSpec, to: DType) -> DType {
    let to = match spec.name {
        TOKEN_EMBEDDING | CLASSIFIER if to == DType::Q4_0 => DType::Q8_0,
        _ => to,
    };
    let blocked = to.block_elems() > 1;
    if spec.is_norm() || (blocked && !spec.row_len().is_multiple_of(to.block_elems() as u64)) {
        DType::F32
    } else {
        to
    }
}

/// Adds every parameter of `config`'s layout to `w`, taken from the flat f32 buffer `params` and stored
/// as [`dtype_for`] says. Returns the names of matrices that had to stay f32.
pub fn add_params(
    w: &mut ModelWriter<'_>,
    config: &Config,
    params: &[f32],
    to: DType,
) -> Result<Vec<&'static str>> {
    let layout = ParamLayout::new(config);
    if params.len() as u64 != layout.total_numel() {
        return Err(Error::Invalid(format!(
            "{} parameters given, the config has {}",
            params.len(),
            layout.total_numel()
        )));
    }
    let mut kept = Vec::new();
    let mut at = 0usize;
    for spec in layout.iter() {
        let n = spec.numel() as usize;
        kept.extend(add_param(w, &spec, &params[at..at + n], to)?);
        at += n;
    }
    Ok(kept)
}

/// Adds one parameter of the layout (`data`: its f32 values, `spec.numel()` of them) to `w`, stored as
/// [`dtype_for`] says; returns its name when it is a matrix that had to stay f32. An importer that reads a
/// tensor at a time calls this rather than [`add_params`], so it never holds the whole model in f32.
pub fn add_param(
    w: &mut ModelWriter<'_>,
    spec: &TensorSpec,
    data: &[f32],
    to: DType,
) -> Result<Option<&'static str>> {
    if data.len() as u64 != spec.numel() {
        return Err(Error::Invalid(format!(
            "tensor '{}': {} values for {} elements",
            spec.name,
            data.len(),
            spec.numel()
        )));
    }
    let dt = dtype_for(spec, to);
    check_finite(spec.name, data)?;
    let bytes =
        encode(dt, data).map_err(|e| Error::Invalid(format!("tensor '{}': {e}", spec.name)))?;
    w.tensor(spec.name, dt, &spec.shape[..spec.ndim()], bytes);
    Ok((dt == DType::F32 && to != DType::F32 && !spec.is_norm()).then_some(spec.name))
}

/// The tokenizer of a parsed model, back on the heap so it can be written again.
pub fn tokenizer_data(tok: &Tokenizer<'_>) -> TokenizerData {
    let m = tok.meta();
    let v = tok.vocab_size() as u32;
    TokenizerData {
        pieces: (0..v).map(|i| tok.piece(i).to_vec()).collect(),
        scores: (0..v).map(|i| tok.score(i)).collect(),
        bos: m.bos,
        eos: m.eos,
        pad: m.pad,
        add_dummy_prefix: m.add_dummy_prefix,
        chat: m.chat,
        split: tok.split(),
        added: tok.added().to_vec(),
    }
}

/// Every parameter of a model file as one flat f32 buffer in layout order (dequantizing as needed).
pub fn params_f32(file: &EnigmaFile<'_>) -> Result<Vec<f32>> {
    let layout = ParamLayout::new(file.config());
    let mut out = Vec::with_capacity(layout.total_numel() as usize);
    for spec in layout.iter() {
        if spec.is_norm() {
            out.extend_from_slice(file.f32s(spec.name, &spec.shape[..spec.ndim()])?);
            continue;
        }
        let w = file.weight(spec)?;
        let mut row = vec![0.0; w.cols()];
        for r in 0..w.rows() {
            w.row_to_f32(r, &mut row);
            out.extend_from_slice(&row);
        }
    }
    Ok(out)
}

/// Rewrites a model with its matrices stored as `to`. Returns the new file's bytes and the matrices that
/// stayed f32.
pub fn requantize(file: &EnigmaFile<'_>, to: DType) -> Result<(Vec<u8>, Vec<&'static str>)> {
    let tok = Tokenizer::from_file(file)?;
    let params = params_f32(file)?;
    let config = *file.config();
    let mut w = ModelWriter::new(config, tokenizer_data(&tok));
    let p = &file.header().provenance;
    w.provenance(
        p.source,
        format!("{}; weights converted to {}", p.notes, to.name()),
    );
    let kept = add_params(&mut w, &config, &params, to)?;
    w.carry_extras(file);
    Ok((w.to_bytes()?, kept))
}
