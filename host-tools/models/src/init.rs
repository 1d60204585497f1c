//! Fresh parameters, the default tokenizer, and resizing one model's parameters to another shape.

use enigma_core::config::{Config, ParamLayout, TensorSpec, W2, WO};
use enigma_core::{EnigmaFile, Tokenizer};
use enigma_runtime::TokenizerData;

/// splitmix64: small, seedable, and good enough for initial weights (not for anything secret).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below stays finite.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// The standard deviation a freshly initialised matrix gets: 0.02, and for the two projections that write
/// into the residual stream (`wo`, `w2`) 0.02 / sqrt(2 L), so the residual's variance does not grow with
/// depth (GPT-2's scheme). Norm weights start at 1.
fn init_std(spec: &TensorSpec, n_layers: u32) -> Option<f32> {
    if spec.is_norm() {
        None
    } else if spec.name == WO || spec.name == W2 {
        Some(0.02 / (2.0 * n_layers as f32).sqrt())
    } else {
        Some(0.02)
    }
}

fn fill(spec: &TensorSpec, n_layers: u32, rng: &mut Rng, out: &mut [f32]) {
    match init_std(spec, n_layers) {
        None => out.fill(1.0),
        Some(std) => out.iter_mut().for_each(|x| *x = rng.normal() * std),
    }
}

/// Every parameter of `config`, freshly initialised, as one flat buffer in [`ParamLayout`] order.
pub fn random_params(config: &Config, seed: u64) -> Vec<f32> {
    let layout = ParamLayout::new(config);
    let mut params = vec![0f32; layout.total_numel() as usize];
    let mut rng = Rng::new(seed);
    let mut at = 0;
    for spec in layout.iter() {
        let n = spec.numel() as usize;
        fill(&spec, config.n_layers, &mut rng, &mut params[at..at + n]);
        at += n;
    }
    params
}

/// Pads a shape to three dims with leading 1s: `(D)` is `(1, 1, D)`, `(V, D)` is `(1, V, D)`.
fn dims3(spec: &TensorSpec) -> [usize; 3] {
    let n = spec.ndim();
    let mut d = [1usize; 3];
    for i in 0..n {
        d[3 - n + i] = spec.shape[i] as usize;
    }
    d
}

/// Parameters of `new` made from the model in `old`: each tensor is freshly initialised (as
/// [`random_params`] does), then the slice it shares with the old tensor of the same name, index by index
/// from the origin, is copied over. Layers beyond the old depth, rows and columns beyond the old widths and
/// vocabulary entries beyond the old vocabulary keep their fresh values. Old weights of any dtype are read
/// as f32.
pub fn resize_params(
    old: &EnigmaFile<'_>,
    new: &Config,
    seed: u64,
) -> enigma_core::Result<Vec<f32>> {
    let old_layout = ParamLayout::new(old.config());
    let layout = ParamLayout::new(new);
    let mut params = random_params(new, seed);
    let mut at = 0;
    for spec in layout.iter() {
        let n = spec.numel() as usize;
        let dst = &mut params[at..at + n];
        at += n;
        let Some(old_spec) = old_layout.get(spec.name) else {
            continue;
        };
        let view = old.weight(old_spec)?;
        let (o, d) = (dims3(&old_spec), dims3(&spec));
        let mut row = vec![0f32; o[2]];
        for i0 in 0..o[0].min(d[0]) {
            for i1 in 0..o[1].min(d[1]) {
                // Rows of the view are the old tensor's last dim, in order: row (i0, i1) is i0 * o1 + i1.
                view.row_to_f32(i0 * o[1] + i1, &mut row);
                let start = (i0 * d[1] + i1) * d[2];
                let k = o[2].min(d[2]);
                dst[start..start + k].copy_from_slice(&row[..k]);
            }
        }
    }
    Ok(params)
}

/// The default tokenizer of a new model: `<pad>`, `<s>`, `</s>`, then one piece per byte, `<0x00>` ..
/// `<0xFF>` (byte fallback). It encodes any text, one token per byte, and is what `enigma train` replaces
/// with a trained vocabulary.
pub fn byte_tokenizer() -> TokenizerData {
    let mut pieces: Vec<Vec<u8>> = vec![b"<pad>".to_vec(), b"<s>".to_vec(), b"</s>".to_vec()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
    TokenizerData {
        scores: vec![0.0; pieces.len()],
        pieces,
        bos: 1,
        eos: 2,
        pad: Some(0),
        add_dummy_prefix: false,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    }
}

/// A model file's tokenizer, copied out so that another model can be written with it.
pub fn tokenizer_of(file: &EnigmaFile<'_>) -> enigma_core::Result<TokenizerData> {
    let tok = Tokenizer::from_file(file)?;
    let meta = tok.meta();
    let v = tok.vocab_size() as u32;
    Ok(TokenizerData {
        pieces: (0..v).map(|id| tok.piece(id).to_vec()).collect(),
        scores: (0..v).map(|id| tok.score(id)).collect(),
        bos: meta.bos,
        eos: meta.eos,
        pad: meta.pad,
        add_dummy_prefix: meta.add_dummy_prefix,
        chat: meta.chat,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use enigma_core::config::{Preset, FINAL_NORM, TOKEN_EMBEDDING, WQ};
    use enigma_runtime::{ModelFile, ModelWriter};

    fn write(config: Config, params: &[f32]) -> ModelFile {
        let mut tok = byte_tokenizer();
        assert_eq!(tok.pieces.len() as u32, config.vocab_size);
        tok.scores[5] = 0.5;
        let mut w = ModelWriter::new(config, tok);
        w.f32_params(params).unwrap();
        ModelFile::from_bytes(&w.to_bytes().unwrap(), "test").unwrap()
    }

    #[test]
    fn fresh_parameters_have_the_intended_scale() {
        let c = Preset::by_name("nano").unwrap().config(259);
        let p = random_params(&c, 7);
        let layout = ParamLayout::new(&c);
        let emb = layout.get(TOKEN_EMBEDDING).unwrap().numel() as usize;
        let mean = p[..emb].iter().sum::<f32>() / emb as f32;
        let var = p[..emb].iter().map(|x| (x - mean).powi(2)).sum::<f32>() / emb as f32;
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((var.sqrt() - 0.02).abs() < 1e-3, "{}", var.sqrt());
        let norm_at = layout.flat_offset(FINAL_NORM).unwrap() as usize;
        assert!(p[norm_at..norm_at + 128].iter().all(|&x| x == 1.0));
        assert_eq!(p, random_params(&c, 7), "seeded");
        assert_ne!(p, random_params(&c, 8));
    }

    #[test]
    fn resizing_copies_the_overlap_and_initialises_the_rest() {
        let small = Preset::by_name("nano").unwrap().config(259);
        let big = Preset::by_name("micro").unwrap().config(259);
        let old_params = random_params(&small, 1);
        let file = write(small, &old_params);
        let f = file.parse().unwrap();
        let p = resize_params(&f, &big, 2).unwrap();
        let (ol, nl) = (ParamLayout::new(&small), ParamLayout::new(&big));
        // wq: (L, D, D), nano (4, 128, 128) into micro (4, 192, 192).
        let (o, n) = (
            ol.flat_offset(WQ).unwrap() as usize,
            nl.flat_offset(WQ).unwrap() as usize,
        );
        for (l, r, c) in [(0, 0, 0), (3, 127, 127), (2, 5, 100)] {
            assert_eq!(
                p[n + (l * 192 + r) * 192 + c],
                old_params[o + (l * 128 + r) * 128 + c]
            );
        }
        // Outside the overlap: the fresh values of the new shape.
        let fresh = random_params(&big, 2);
        for (l, r, c) in [(0, 0, 128), (1, 150, 3), (3, 191, 191)] {
            let i = n + (l * 192 + r) * 192 + c;
            assert_eq!(p[i], fresh[i]);
        }
        // And back down: the shrunk model holds exactly the original values.
        let grown = write(big, &p);
        let back = resize_params(&grown.parse().unwrap(), &small, 3).unwrap();
        assert_eq!(back, old_params);
    }

    #[test]
    fn a_tokenizer_survives_being_copied_out() {
        let c = Preset::by_name("nano").unwrap().config(259);
        let file = write(c, &random_params(&c, 1));
        let tok = tokenizer_of(&file.parse().unwrap()).unwrap();
        let mut want = byte_tokenizer();
        want.scores[5] = 0.5;
        assert_eq!(tok, want);
        assert_eq!(tok.meta().byte_fallback, Some(3));
    }
}
