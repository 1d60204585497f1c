//! Quantized stories260K against its f32 self: the same greedy start, and perplexity within each
//! format's error budget on the TinyStories sample (the domain the model was trained on).

use enigma_core::kernels::DType;
use enigma_core::{KvType, Sampler, SamplerConfig, Tokenizer};
use enigma_eval::perplexity::{perplexity, tokens_of_file};
use enigma_models::llama2c;
use enigma_runtime::{Backend, HostSession, ModelFile};
use enigma_testkit::{shared_bytes, shared_file};

fn model(dtype: DType, test: &str) -> Option<ModelFile> {
    let ckpt = shared_bytes("models/stories260K.bin", test)?;
    let tok = shared_bytes("models/tok512.bin", test)?;
    let bytes = llama2c::import_as(&ckpt, &tok, "stories260K.bin", dtype).expect("import");
    Some(ModelFile::from_bytes(&bytes, format!("stories260K-{}", dtype.name())).expect("valid"))
}

fn greedy(file: &ModelFile, n: usize) -> Vec<u32> {
    let backend = Backend::cpu(Some(1)).expect("cpu");
    let m = file.model(backend.kernels()).expect("model");
    let mut ids = vec![0; Tokenizer::max_tokens(16)];
    let len = m
        .tokenizer
        .encode("Once upon a time", true, false, &mut ids)
        .expect("encode");
    let mut bufs = HostSession::new(&m.transformer, 64);
    let mut s = bufs.session(m.transformer).expect("session");
    let mut out = Vec::new();
    s.generate(
        backend.exec(),
        &m.tokenizer,
        &mut Sampler::new(SamplerConfig::greedy()),
        &ids[..len],
        n,
        false,
        &mut |t, _| {
            out.push(t);
            true
        },
    )
    .expect("generate");
    out
}

#[test]
fn quantized_greedy_starts_like_f32() {
    let Some(f32m) = model(DType::F32, "quantized_greedy_starts_like_f32") else {
        return;
    };
    let reference = greedy(&f32m, 32);
    assert_eq!(reference.len(), 32);
    for dtype in [DType::Q8_0, DType::F16, DType::BF16] {
        let q = model(dtype, "quantized_greedy_starts_like_f32").expect("model");
        // The quantized file is smaller: the matrices really are stored quantized.
        assert!(
            q.bytes().len() < f32m.bytes().len() * 6 / 10,
            "{}",
            dtype.name()
        );
        assert_eq!(
            greedy(&q, 32),
            reference,
            "{} greedy differs from f32 in its first 32 tokens",
            dtype.name()
        );
    }
}

#[test]
fn perplexity_q8_0_within_2_percent_and_q4_0_within_10_percent_of_f32() {
    let test = "perplexity_q8_0_within_2_percent_and_q4_0_within_10_percent_of_f32";
    let Some(data) = shared_file("data/tinystories_sample_197k.txt", test) else {
        return;
    };
    let backend = Backend::cpu(None).expect("cpu");
    let ppl = |dtype| {
        let file = model(dtype, test).expect("model");
        let m = file.model(backend.kernels()).expect("model");
        let tokens = tokens_of_file(&m, &data).expect("tokens");
        assert!(tokens.len() > 90_000, "{} tokens", tokens.len());
        perplexity(&m, backend.exec(), &tokens, 512, 0, KvType::F32)
            .expect("perplexity")
            .ppl()
    };
    let base = ppl(DType::F32);
    let q8 = ppl(DType::Q8_0);
    let q4 = ppl(DType::Q4_0);
    eprintln!(
        "perplexity f32 {base:.4}, q8_0 {q8:.4} ({:+.2}%), q4_0 {q4:.4} ({:+.2}%)",
        100.0 * (q8 / base - 1.0),
        100.0 * (q4 / base - 1.0)
    );
    assert!(
        base > 1.0 && base < 20.0,
        "f32 perplexity {base} is not a trained model's"
    );
    assert!((q8 / base - 1.0).abs() < 0.02, "q8_0 {q8} vs f32 {base}");
    assert!((q4 / base - 1.0).abs() < 0.10, "q4_0 {q4} vs f32 {base}");
}
