//! The trained BPE tokenizer: its merges survive a save and a load, and the core's encoder (what `enigma run`
//! uses) gives exactly the trainer's ids, both from the arrays and from a written `.enigma` file.

use enigma_core::config::Preset;
use enigma_core::Tokenizer;
use enigma_runtime::{ModelFile, ModelWriter};
use enigma_testkit::{shared_file, shared_text};
use enigma_train::bpe::{Bpe, ASSISTANT, BOS, EOS, FIRST_MERGE, USER};
use enigma_train::data::Encode;
use enigma_train::vocab::Vocab;

fn corpus(test: &str) -> Option<String> {
    let text = shared_text("data/tinyshakespeare.txt", test)?;
    // 300 KB keeps the test fast and still learns thousands of merges.
    Some(text[..floor(&text, 300_000)].to_string())
}

fn floor(s: &str, i: usize) -> usize {
    (0..=i.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

const SAMPLES: &[&str] = &[
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading spaces, trailing spaces   \n\n\nand blank lines\n",
    "Ünïcödé — “quotes” 日本語 emoji 🙂 and tabs\tinside",
    "<s>not a special</s> <|user|> <pad> <|assistant|>",
    "",
    " ",
    "\n",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "MENENIUS:\nWhat work's, my countrymen, in hand? where go you\nWith bats and clubs? The matter? speak, I pray you.",
];

fn core_encode(tok: &Tokenizer<'_>, text: &str) -> Vec<u32> {
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(text, false, false, &mut ids).unwrap();
    ids.truncate(n);
    ids
}

#[test]
fn merges_survive_save_and_load_and_the_core_encodes_identically() {
    let Some(text) = corpus("merges_survive_save_and_load") else {
        return;
    };
    let bpe = Bpe::train(&[&text], 2000).unwrap();
    assert_eq!(bpe.vocab_size(), 2000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tok.json");
    bpe.save(&path).unwrap();
    let loaded = Bpe::load(&path).unwrap();
    assert_eq!(loaded.merges(), bpe.merges());
    assert_eq!(loaded.data(), bpe.data());

    // The core's encoder over the same vocabulary, in a real model file.
    let data = bpe.data();
    assert_eq!((data.bos, data.eos), (BOS, EOS));
    let c = Preset::by_name("nano")
        .unwrap()
        .config(data.pieces.len() as u32);
    let mut c = c;
    (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads) = (8, 32, 1, 2, 1);
    let params = vec![0.0f32; c.param_count() as usize];
    let mut w = ModelWriter::new(c, data.clone());
    w.f32_params(&params).unwrap();
    let file = ModelFile::from_bytes(&w.to_bytes().unwrap(), "tok-test").unwrap();
    let model = file.model(enigma_core::kernels::kernels()).unwrap();
    let meta = model.tokenizer.meta();
    assert_eq!(meta.byte_fallback, None);
    assert!(!meta.add_dummy_prefix);
    assert_eq!(
        meta.chat.map(|m| (m.user, m.assistant)),
        Some((USER, ASSISTANT))
    );

    let mut samples: Vec<&str> = SAMPLES.to_vec();
    // Long real passages: every line of a slice of the corpus, and the slice whole.
    let tail = &text[floor(&text, 250_000)..];
    samples.extend(tail.lines().take(400));
    // The core's loop is quadratic: a 3 KB passage whole; the runtime's fast encoder takes the 50 KB below.
    samples.push(&tail[..floor(tail, 3000)]);
    for s in samples {
        let ours = loaded.encode(s);
        assert_eq!(ours, bpe.encode(s));
        assert_eq!(core_encode(&model.tokenizer, s), ours, "{s:?}");
        assert_eq!(loaded.decode(&ours), s.as_bytes());
        assert!(
            ours.iter().all(|&id| !(256..FIRST_MERGE).contains(&id)),
            "text never becomes a special: {s:?}"
        );
    }
    // The runtime's O(n log n) encoder agrees on the whole slice too.
    let fast = enigma_runtime::tokenize::encode(&model.tokenizer, tail, false, false).unwrap();
    assert_eq!(fast, bpe.encode(tail));

    // A model's tokenizer is recognised as ours again (fine-tuning keeps the fast encoder).
    let back = enigma_runtime::quantize::tokenizer_data(&model.tokenizer);
    let vocab = Vocab::from_data(back, &[]).unwrap();
    assert!(vocab.bpe().is_some());
    assert_eq!(vocab.encode(SAMPLES[0]).unwrap(), bpe.encode(SAMPLES[0]));
}

#[test]
fn tokenizer_files_are_checked_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        ("{", "not an enigma tokenizer file"),
        (
            r#"{"format":"x","version":1,"specials":[],"merges":[]}"#,
            "format",
        ),
        (
            r#"{"format":"enigma-bpe","version":1,"specials":["<s>","</s>","<pad>","<|user|>","<|assistant|>"],"merges":[[97,98],[97,98]]}"#,
            "repeats",
        ),
        (
            r#"{"format":"enigma-bpe","version":1,"specials":["<s>","</s>","<pad>","<|user|>","<|assistant|>"],"merges":[[97,900]]}"#,
            "does not exist",
        ),
        (
            r#"{"format":"enigma-bpe","version":1,"specials":["<s>","</s>","<pad>","<|user|>","<|assistant|>"],"merges":[[256,98]]}"#,
            "does not exist",
        ),
    ];
    for (i, (json, want)) in bad.iter().enumerate() {
        let p = dir.path().join(format!("t{i}.json"));
        std::fs::write(&p, json).unwrap();
        let err = format!("{:#}", Bpe::load(&p).unwrap_err());
        assert!(err.contains(want), "{json}: {err}");
    }
}

#[test]
fn tokenizer_train_command_writes_a_loadable_file() {
    let Some(path) = shared_file(
        "data/tinystories_sample_197k.txt",
        "tokenizer_train_command",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tok.json");
    assert_cmd::Command::cargo_bin("enigma")
        .unwrap()
        .args(["tokenizer", "train", "--vocab-size", "600", "-o"])
        .arg(&out)
        .arg("--data")
        .arg(&path)
        .assert()
        .success();
    let bpe = Bpe::load(&out).unwrap();
    assert_eq!(bpe.vocab_size(), 600);
    assert!(bpe.encode("Once upon a time").len() < 10);
}
