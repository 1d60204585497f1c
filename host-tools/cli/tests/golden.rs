//! Golden tests against llama2.c's own output for stories260K (../shared/reference/stories260K).

mod support;

use assert_cmd::Command;
use enigma_core::kernels::DType;
use enigma_core::{Sampler, SamplerConfig, Serial, Tokenizer};
use enigma_models::llama2c;
use enigma_runtime::{HostSession, ModelFile, Pool};
use enigma_testkit::{shared_bytes, shared_text};

const REF_TOKENS: &str = "reference/stories260K/greedy_n256_once_upon_a_time.tokens.json";
const REF_TEXT: &str = "reference/stories260K/greedy_n256_once_upon_a_time.txt";
const PROMPT: &str = "Once upon a time";

struct Fixture {
    ckpt: Vec<u8>,
    tok: Vec<u8>,
    tokens: Vec<u32>,
    text: Vec<u8>,
}

fn fixture(test: &str) -> Option<Fixture> {
    let ckpt = shared_bytes("models/stories260K.bin", test)?;
    let tok = shared_bytes("models/tok512.bin", test)?;
    let json = shared_text(REF_TOKENS, test)?;
    let tokens = json
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|s| s.trim().parse().expect("reference token"))
        .collect();
    let text = shared_bytes(REF_TEXT, test)?;
    Some(Fixture {
        ckpt,
        tok,
        tokens,
        text,
    })
}

/// Greedy generation as llama2.c's `run -n 256` does it: 256 positions in all, prompt included.
/// Returns every token (BOS, prompt, generated) and the text printed, with run.c's final newline.
fn greedy(file: &ModelFile, chunk: usize, threads: usize) -> (Vec<u32>, Vec<u8>) {
    let pool;
    let exec: &dyn enigma_core::Exec = if threads > 1 {
        pool = Pool::new(threads).unwrap();
        &pool
    } else {
        &Serial
    };
    let model = file.model(enigma_core::kernels::kernels()).unwrap();
    let mut ids = vec![0; Tokenizer::max_tokens(PROMPT.len())];
    let n = model
        .tokenizer
        .encode(PROMPT, true, false, &mut ids)
        .unwrap();
    ids.truncate(n);
    let mut bufs = HostSession::new(&model.transformer, chunk);
    let mut session = bufs.session(model.transformer).unwrap();
    let mut sampler = Sampler::new(SamplerConfig::greedy());
    // With the prompt echoed, the emitted ids are the prompt after BOS, then every generated token.
    let mut all = vec![ids[0]];
    let mut text = Vec::new();
    // A quantized model may stop at EOS before 256: callers compare the whole token list.
    session
        .generate(
            exec,
            &model.tokenizer,
            &mut sampler,
            &ids,
            256 + 1 - n,
            true,
            &mut |t, piece| {
                all.push(t);
                text.extend_from_slice(piece);
                true
            },
        )
        .unwrap();
    text.push(b'\n');
    (all, text)
}

#[test]
fn stories260k_greedy_matches_llama2c_token_for_token() {
    let Some(f) = fixture("stories260k_greedy_matches_llama2c_token_for_token") else {
        return;
    };
    let bytes = llama2c::import(&f.ckpt, &f.tok, "stories260K.bin").unwrap();
    // Read back zero-copy from an aligned in-memory copy of the written file.
    let file = ModelFile::from_bytes(&bytes, "stories260K.enigma").unwrap();
    let (tokens, text) = greedy(&file, 64, 1);
    assert_eq!(tokens, f.tokens);
    assert_eq!(
        String::from_utf8_lossy(&text),
        String::from_utf8_lossy(&f.text)
    );
    assert_eq!(text, f.text);
}

#[test]
fn prefill_chunks_and_threads_do_not_change_the_tokens() {
    let Some(f) = fixture("prefill_chunks_and_threads_do_not_change_the_tokens") else {
        return;
    };
    let bytes = llama2c::import(&f.ckpt, &f.tok, "stories260K.bin").unwrap();
    let file = ModelFile::from_bytes(&bytes, "stories260K.enigma").unwrap();
    for (chunk, threads) in [(1, 1), (3, 1), (64, 2), (1, 2)] {
        let (tokens, _) = greedy(&file, chunk, threads);
        assert_eq!(tokens, f.tokens, "chunk {chunk}, threads {threads}");
    }
}

/// Rewrites the legacy checkpoint in llama2.c's current layout (no freq_cis tables), optionally with a
/// separate classifier (negative vocab size in the header) that is a copy of the embedding.
fn current_layout(legacy: &[u8], separate_classifier: bool) -> Vec<u8> {
    let i32_at = |i: usize| i32::from_le_bytes(legacy[i * 4..i * 4 + 4].try_into().unwrap());
    let (dim, hidden, layers, heads, kv_heads, vocab, seq) = (
        i32_at(0),
        i32_at(1),
        i32_at(2),
        i32_at(3),
        i32_at(4),
        i32_at(5),
        i32_at(6),
    );
    let hs = dim / heads;
    let kv_dim = hs * kv_heads;
    let floats = vocab * dim
        + layers * (2 * dim + dim * dim * 2 + 2 * kv_dim * dim + 3 * dim * hidden)
        + dim;
    let body = &legacy[28..28 + floats as usize * 4];
    let mut out = Vec::new();
    for v in [
        dim,
        hidden,
        layers,
        heads,
        kv_heads,
        if separate_classifier { -vocab } else { vocab },
        seq,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(body);
    if separate_classifier {
        out.extend_from_slice(&body[..(vocab * dim) as usize * 4]);
    }
    out
}

#[test]
fn both_llama2c_layouts_and_a_separate_classifier_give_the_same_tokens() {
    let Some(f) = fixture("both_llama2c_layouts_and_a_separate_classifier_give_the_same_tokens")
    else {
        return;
    };
    for separate in [false, true] {
        let ckpt = current_layout(&f.ckpt, separate);
        let parsed = llama2c::read_checkpoint(&ckpt).unwrap();
        assert!(!parsed.legacy);
        assert_eq!(parsed.config.tied_classifier, !separate);
        let bytes = llama2c::import(&ckpt, &f.tok, "current.bin").unwrap();
        let file = ModelFile::from_bytes(&bytes, "current.enigma").unwrap();
        if separate {
            assert!(file.parse().unwrap().tensor("classifier").is_some());
        }
        let (tokens, _) = greedy(&file, 64, 1);
        assert_eq!(tokens, f.tokens, "separate classifier: {separate}");
    }
    assert!(llama2c::read_checkpoint(&f.ckpt).unwrap().legacy);
}

#[test]
fn enigma_import_then_run_prints_llama2c_output_byte_for_byte() {
    let Some(f) = fixture("enigma_import_then_run_prints_llama2c_output_byte_for_byte") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("stories260K.enigma");
    let models = enigma_testkit::shared_dir().join("models");
    Command::cargo_bin("enigma")
        .unwrap()
        .args(["import", "llama2c"])
        .arg(models.join("stories260K.bin"))
        .arg("--tokenizer")
        .arg(models.join("tok512.bin"))
        .arg("-o")
        .arg(&model)
        .assert()
        .success();
    // The file on disk is mapped, not copied, by `run`; the prompt is 5 tokens with BOS.
    let out = support::greedy_run(&model, PROMPT, f.tokens.len() - 5);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&f.text)
    );
    assert_eq!(out.stdout, f.text);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tok/s"), "tokens/s report missing: {err}");
}

#[test]
fn the_gguf_of_stories260k_by_llama_cpps_converter_runs_llama2c_tokens() {
    let test = "the_gguf_of_stories260k_by_llama_cpps_converter_runs_llama2c_tokens";
    let Some(f) = fixture(test) else {
        return;
    };
    let Some(gguf) = enigma_testkit::shared_file("models/tinyllamas-stories-260k-f32.gguf", test)
    else {
        return;
    };
    // Through the library: every token, BOS and prompt included.
    let file = enigma_models::gguf::load(&gguf).unwrap();
    let (tokens, text) = greedy(&file, 64, 1);
    assert_eq!(tokens, f.tokens);
    assert_eq!(text, f.text);
    // Through `enigma run -m file.gguf`, with no conversion step.
    assert_eq!(
        String::from_utf8_lossy(&support::greedy_run(&gguf, PROMPT, f.tokens.len() - 5).stdout),
        String::from_utf8_lossy(&f.text)
    );
}

#[test]
fn export_gguf_is_read_back_by_the_pip_reader_and_ours() {
    let test = "export_gguf_is_read_back_by_the_pip_reader_and_ours";
    let Some(f) = fixture(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::F32, DType::Q8_0, DType::Q4_0] {
        let model = dir.path().join(format!("s-{}.enigma", dtype.name()));
        let bytes = llama2c::import_as(&f.ckpt, &f.tok, "stories260K.bin", dtype).unwrap();
        std::fs::write(&model, &bytes).unwrap();
        let out = dir.path().join(format!("s-{}.gguf", dtype.name()));
        let export = || {
            Command::cargo_bin("enigma")
                .unwrap()
                .args(["export", "gguf"])
                .arg(&model)
                .arg("-o")
                .arg(&out)
                .assert()
        };
        export().success();
        // Exists now: a second export is refused without --force.
        export().failure();
        // dim 64, hidden 172, 5 layers, kv dim 32, vocab 512, tied classifier.
        let args = [out.to_str().unwrap(), "5", "64", "172", "32", "512", "tied"];
        let Some(summary) = enigma_testkit::gguf_pip(test, &[&["check"][..], &args].concat())
        else {
            return;
        };
        let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(summary["model"], "llama");
        let types = &summary["tensors"];
        // Norms stay f32; matrices keep the dtype they were stored in; 172-wide rows are not whole blocks.
        assert_eq!(types["blk.0.attn_norm.weight"]["type"], "f32");
        assert_eq!(types["blk.0.attn_q.weight"]["type"], dtype.name());
        assert_eq!(types["blk.4.ffn_down.weight"]["type"], "f32");
        // The values the pip reader dequantizes are the model's.
        let file = ModelFile::from_bytes(&bytes, &model).unwrap();
        let parsed = file.parse().unwrap();
        let w = parsed.tensor("token_embedding").unwrap();
        let row0 = enigma_runtime::quantize::params_f32(&parsed).unwrap();
        let sum: f64 = row0[..w.numel() as usize].iter().map(|v| *v as f64).sum();
        let theirs = types["token_embd.weight"]["sum"].as_f64().unwrap();
        assert!((sum - theirs).abs() < 1e-3, "{sum} vs {theirs}");
        // Our reader: the same greedy tokens as the model it came from.
        let (want, _) = greedy(&file, 64, 1);
        let (got, _) = greedy(&enigma_models::gguf::load(&out).unwrap(), 64, 1);
        assert_eq!(got, want, "{}", dtype.name());
        if dtype == DType::F32 {
            assert_eq!(got, f.tokens);
        }
    }
}
