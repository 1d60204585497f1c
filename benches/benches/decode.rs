//! End-to-end decode of stories260K (imported from ../shared) on one thread: where overheads, not memory
//! bandwidth, decide the speed.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use enigma_core::{Sampler, SamplerConfig, Serial, Tokenizer};
use enigma_runtime::{HostSession, ModelFile};
use enigma_testkit::shared_bytes;

fn decode(c: &mut Criterion) {
    let (Some(ckpt), Some(tok)) = (
        shared_bytes("models/stories260K.bin", "bench decode"),
        shared_bytes("models/tok512.bin", "bench decode"),
    ) else {
        return;
    };
    let bytes =
        enigma_models::llama2c::import(&ckpt, &tok, "stories260K.bin").expect("import stories260K");
    let file = ModelFile::from_bytes(&bytes, "stories260K").expect("valid model");
    let model = file.model(enigma_kernels::kernels()).expect("model");
    let mut ids = vec![0; Tokenizer::max_tokens(16)];
    let n = model
        .tokenizer
        .encode("Once upon a time", true, false, &mut ids)
        .expect("encode");
    ids.truncate(n);
    let mut bufs = HostSession::new(&model.transformer, 64);
    let steps = 128;
    let mut g = c.benchmark_group("decode/stories260K");
    g.throughput(Throughput::Elements(steps as u64));
    g.bench_function(format!("greedy_{steps}_tokens_1_thread"), |b| {
        b.iter(|| {
            let mut session = bufs.session(model.transformer).expect("session");
            let mut sampler = Sampler::new(SamplerConfig::greedy());
            session
                .generate(
                    &Serial,
                    &model.tokenizer,
                    &mut sampler,
                    &ids,
                    steps,
                    false,
                    &mut |_, _| true,
                )
                .expect("generate")
        })
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
