//! Decode speed of candle on a llama2.c checkpoint: `candle-peer CKPT f32|q8_0 STEPS ROUNDS`.
//! Prints `candle <mode> tok/s <median>` after ROUNDS rounds of STEPS greedy tokens from BOS.
//! Threads: candle follows RAYON_NUM_THREADS, which the comparison script sets.

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::llama2_c::{Cache, Config, Llama};
use candle_transformers::models::llama2_c_weights::TransformerWeights;
use candle_transformers::models::quantized_llama2_c::QLlama;
use std::time::Instant;

enum Model {
    F32(Llama),
    Q8(QLlama),
}

impl Model {
    fn forward(&self, x: &Tensor, pos: usize, cache: &mut Cache) -> Result<Tensor> {
        Ok(match self {
            Model::F32(m) => m.forward(x, pos, cache)?,
            Model::Q8(m) => m.forward(x, pos, cache)?,
        })
    }
}

/// The names candle's llama2.c models read, with their shapes.
fn names(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, h, v, hs) = (c.dim, c.hidden_dim, c.vocab_size, c.dim / c.n_heads);
    let kv = hs * c.n_kv_heads;
    let mut out = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, d]),
        ("lm_head.weight".to_string(), vec![v, d]),
        ("model.norm.weight".to_string(), vec![d]),
        ("rot.freq_cis_real".to_string(), vec![c.seq_len, hs / 2]),
        ("rot.freq_cis_imag".to_string(), vec![c.seq_len, hs / 2]),
    ];
    for l in 0..c.n_layers {
        let p = format!("model.layers.{l}.");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![d, d]),
            ("self_attn.k_proj.weight", vec![kv, d]),
            ("self_attn.v_proj.weight", vec![kv, d]),
            ("self_attn.o_proj.weight", vec![d, d]),
            ("mlp.gate_proj.weight", vec![h, d]),
            ("mlp.down_proj.weight", vec![d, h]),
            ("mlp.up_proj.weight", vec![h, d]),
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
        ] {
            out.push((format!("{p}{n}"), s));
        }
    }
    out
}

fn load(path: &str, mode: &str, dev: &Device) -> Result<(Model, Cache)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
    let config = Config::from_reader(&mut file)?;
    let weights = TransformerWeights::from_reader(&mut file, &config, dev)?;
    let vb = weights.var_builder(&config, dev)?;
    let cache = Cache::new(true, &config, vb.pp("rot"))?;
    match mode {
        "f32" => Ok((Model::F32(Llama::load(vb, config)?), cache)),
        "q8_0" => {
            // Quantize the matrices with candle's own q8_0 and load them through a GGUF buffer, as candle's
            // example loads its quantized llama2.c models.
            let mut qs = Vec::new();
            for (name, shape) in names(&config) {
                // A fresh copy: candle's quantize reads a view's whole storage, ignoring its offset
                // (a per-layer norm would come out as all layers' norms).
                let t = vb.get(shape.as_slice(), &name)?;
                let t = Tensor::from_vec(t.flatten_all()?.to_vec1::<f32>()?, shape.as_slice(), dev)?;
                let dt = if shape.len() == 2 && !name.starts_with("rot.") { GgmlDType::Q8_0 } else { GgmlDType::F32 };
                qs.push((name, QTensor::quantize(&t, dt)?));
            }
            let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(n, q)| (n.as_str(), q)).collect();
            let mut buf = std::io::Cursor::new(Vec::new());
            gguf_file::write(&mut buf, &[], &refs)?;
            let qvb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf_buffer(buf.get_ref(), dev)?;
            Ok((Model::Q8(QLlama::load(qvb, config)?), cache))
        }
        other => bail!("mode must be f32 or q8_0, not {other}"),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        bail!("usage: candle-peer CHECKPOINT f32|q8_0 STEPS ROUNDS");
    }
    let (steps, rounds): (usize, usize) = (args[3].parse()?, args[4].parse()?);
    let dev = Device::Cpu;
    let mut rates = Vec::new();
    for _ in 0..rounds {
        // A fresh cache per round, as `enigma bench` starts each round with an empty context.
        let (model, mut cache) = load(&args[1], &args[2], &dev)?;
        let mut token = 1u32;
        let t = Instant::now();
        for pos in 0..steps {
            let input = Tensor::new(&[token], &dev)?.unsqueeze(0)?;
            let logits = model.forward(&input, pos, &mut cache)?;
            let logits = logits.i((0, logits.dim(1)? - 1))?.to_dtype(DType::F32)?;
            token = logits.argmax(0)?.to_scalar::<u32>()?;
        }
        rates.push(steps as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!("candle {} tok/s {:.2}", args[2], rates[rates.len() / 2]);
    Ok(())
}
