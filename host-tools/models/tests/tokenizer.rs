//! The core tokenizer on llama2.c's real vocabularies: `tok512.bin` (stories260K, 512 tokens, imported with
//! its checkpoint through `enigma import`'s code) and `tokenizer.bin` (Llama 2, 32000 tokens, written into a
//! tokenizer-only model file). Known encodings come from independent sources: SentencePiece's output as
//! recorded in llama2.c's `test.c`, and the token file of llama2.c's own `run.c` for stories260K.

use enigma_core::config::Config;
use enigma_core::{EnigmaFile, Tokenizer};
use enigma_models::llama2c;
use enigma_runtime::{AlignedBytes, ModelWriter};
use enigma_testkit::{shared_bytes, shared_text};
use proptest::prelude::*;
use std::sync::OnceLock;

/// Parses `bytes` and views its tokenizer for the rest of the test process.
fn leak_tokenizer(bytes: &[u8]) -> Tokenizer<'static> {
    let mem: &'static AlignedBytes = Box::leak(Box::new(AlignedBytes::copy_from(bytes)));
    let file = EnigmaFile::parse(mem).unwrap();
    file.verify_checksum().unwrap();
    Tokenizer::from_file(&file).unwrap()
}

/// `enigma import llama2c stories260K.bin --tokenizer tok512.bin`'s output.
fn stories260k() -> Option<&'static [u8]> {
    static B: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| {
        let ckpt = shared_bytes("models/stories260K.bin", "tok512")?;
        let tok = shared_bytes("models/tok512.bin", "tok512")?;
        Some(llama2c::import(&ckpt, &tok, "stories260K.bin").expect("stories260K imports"))
    })
    .as_deref()
}

/// tok512 as the import stores it.
fn tok512() -> Option<Tokenizer<'static>> {
    static T: OnceLock<Option<Tokenizer<'static>>> = OnceLock::new();
    *T.get_or_init(|| Some(leak_tokenizer(stories260k()?)))
}

/// The Llama 2 tokenizer. It has no checkpoint here, so it goes into a file of its own with a tiny config
/// of vocabulary 32000 and no weights: the tokenizer needs only its four tensors.
fn tok32k() -> Option<Tokenizer<'static>> {
    static T: OnceLock<Option<Tokenizer<'static>>> = OnceLock::new();
    *T.get_or_init(|| {
        let bytes = shared_bytes("models/tokenizer.bin", "tok32k")?;
        let data = llama2c::read_tokenizer(&bytes, 32000).expect("tokenizer.bin reads");
        let config = Config {
            dim: 2,
            hidden_dim: 2,
            n_layers: 1,
            n_heads: 1,
            n_kv_heads: 1,
            vocab_size: 32000,
            seq_len: 2,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            tied_classifier: true,
        };
        let bytes = ModelWriter::new(config, data).to_bytes().unwrap();
        Some(leak_tokenizer(&bytes))
    })
}

fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool, eos: bool) -> Vec<u32> {
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode(text, bos, eos, &mut ids).unwrap();
    ids.truncate(n);
    ids
}

/// The bytes the tokens after the first print as, each decoded after the one before (as `run` streams them).
fn decode(tok: &Tokenizer<'_>, ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in ids.windows(2) {
        out.extend_from_slice(tok.decode(w[0], w[1]));
    }
    out
}

fn roundtrip(tok: &Tokenizer<'_>, text: &str) -> Result<(), TestCaseError> {
    let ids = encode(tok, text, true, false);
    prop_assert_eq!(ids[0], tok.bos());
    prop_assert!(ids.iter().all(|&t| (t as usize) < tok.vocab_size()));
    prop_assert!(ids.len() <= Tokenizer::max_tokens(text.len()));
    let back = decode(tok, &ids);
    prop_assert_eq!(String::from_utf8_lossy(&back), text, "ids {:?}", ids);
    prop_assert_eq!(back, text.as_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Known encodings.

/// Prompts and the ids SentencePiece gave for them with the Llama 2 tokenizer and BOS, copied as data from
/// karpathy/llama2.c `test.c` (`test_prompt_encodings`; its comment: "the tests below are taken from the
/// Meta Llama 2 repo example code ... and the expected tokens come from me breaking in the debugger in
/// Python"), https://github.com/karpathy/llama2.c/blob/master/test.c
const LLAMA2C_TEST_C: [(&str, &[u32]); 5] = [
    ("", &[1]),
    (
        "I believe the meaning of life is",
        &[1, 306, 4658, 278, 6593, 310, 2834, 338],
    ),
    (
        "Simply put, the theory of relativity states that ",
        &[
            1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871,
        ],
    ),
    (
        "A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
        &[
            1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13,
            4706, 6324, 14332, 29892, 13, 13, 4706, 306, 925, 29871,
        ],
    ),
    (
        "Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n        plush girafe => girafe peluche\n        cheese =>",
        &[
            1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449,
            276, 316, 2778, 13, 4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318,
            13, 4706, 715, 1878, 330, 3055, 1725, 1149, 330, 3055, 1725, 4639, 28754, 13, 4706,
            923, 968, 1149,
        ],
    ),
];

#[test]
fn llama2_tokenizer_matches_sentencepiece() {
    let Some(tok) = tok32k() else { return };
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!(tok.meta().byte_fallback, Some(3));
    for (prompt, want) in LLAMA2C_TEST_C {
        assert_eq!(encode(&tok, prompt, true, false), want, "{prompt:?}");
        // And back: the ids decode to the prompt.
        assert_eq!(
            String::from_utf8(decode(&tok, want)).unwrap(),
            prompt,
            "{want:?}"
        );
    }
    // EOS goes last, after the merges.
    let ids = encode(&tok, "I believe the meaning of life is", true, true);
    assert_eq!(ids, [1, 306, 4658, 278, 6593, 310, 2834, 338, 2]);
    assert_eq!(
        encode(&tok, "I believe", false, false),
        [306, 4658],
        "no BOS"
    );
}

/// Parses the reference's JSON array of token ids.
fn reference_tokens(text: &str) -> Vec<u32> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|t| t.trim().parse().unwrap())
        .collect()
}

#[test]
fn stories260k_prompt_matches_llama2c_run() {
    let Some(tok) = tok512() else { return };
    let Some(json) = shared_text(
        "reference/stories260K/greedy_n256_once_upon_a_time.tokens.json",
        "stories260k_prompt_matches_llama2c_run",
    ) else {
        return;
    };
    let reference = reference_tokens(&json);
    let prompt = "Once upon a time";
    let ids = encode(&tok, prompt, true, false);
    assert_eq!(ids[0], 1);
    assert!(ids.len() > 2, "{ids:?}");
    assert_eq!(ids, reference[..ids.len()], "BOS and the prompt tokens");
    assert_eq!(decode(&tok, &ids), prompt.as_bytes());
    // The reference continues with a token that is not part of the prompt's text.
    let longer = String::from_utf8(decode(&tok, &reference[..ids.len() + 1])).unwrap();
    assert!(longer.starts_with(prompt) && longer.len() > prompt.len());
}

/// docs/FORMAT.md's worked example is these bytes (all but the header CRC, which covers the creation time).
#[test]
fn imported_file_starts_as_format_md_shows() {
    let Some(b) = stories260k() else { return };
    let Some(ckpt) = shared_bytes(
        "models/stories260K.bin",
        "imported_file_starts_as_format_md_shows",
    ) else {
        return;
    };
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    assert_eq!(&b[..12], hex("454e 474d 0100 0000 b201 0000"));
    let want = hex("40ac 0105 0804 8004 8004 0040 1c46 acc5 \
         2737 0101 0200 0701 0103 000f 0f74 6f6b \
         656e 5f65 6d62 6564 6469 6e67 0002 8004 \
         4080 0480 8008 0961 7474 6e5f 6e6f 726d");
    assert_eq!(&b[16..16 + want.len()], want);
    assert!(b[450..512].iter().all(|&x| x == 0));
    assert_eq!(
        &b[512..516],
        &ckpt[28..32],
        "the embedding's first f32, copied from the checkpoint"
    );
}

#[test]
fn byte_pieces_decode_to_their_byte() {
    for (tok, name) in [(tok512(), "tok512"), (tok32k(), "tokenizer.bin")] {
        let Some(tok) = tok else { continue };
        let nl = tok.lookup(b"<0x0A>").unwrap();
        assert_eq!(nl, 13, "{name}");
        // After BOS and after any other token alike.
        assert_eq!(tok.decode(tok.bos(), nl), b"\n");
        assert_eq!(tok.decode(100, nl), b"\n");
        for b in [0u8, 0x09, 0x41, 0x80, 0xe2, 0xff] {
            let id = tok.lookup(format!("<0x{b:02X}>").as_bytes()).unwrap();
            assert_eq!(
                id,
                3 + b as u32,
                "{name}: byte fallback ids are consecutive"
            );
            assert_eq!(tok.decode(200, id), [b]);
        }
        // Text with a newline uses that piece.
        let ids = encode(&tok, "a\nb", true, false);
        assert!(ids.contains(&nl), "{name}: {ids:?}");
    }
    // Characters the vocabulary lacks fall back to their UTF-8 bytes: U+1F600 is F0 9F 98 80.
    if let Some(tok) = tok32k() {
        assert_eq!(
            encode(&tok, "\u{1F600}", true, false),
            [1, 29871, 3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80]
        );
    }
}

#[test]
fn leading_space_is_stripped_only_after_bos() {
    if let Some(tok) = tok32k() {
        let hello = tok.lookup(b" Hello").unwrap();
        assert_eq!(hello, 15043);
        assert_eq!(tok.decode(tok.bos(), hello), b"Hello");
        assert_eq!(tok.decode(306, hello), b" Hello");
        assert_eq!(encode(&tok, "Hello", true, false), [1, hello]);
        // A text that starts with a space keeps it: the dummy prefix is what gets stripped.
        let ids = encode(&tok, " Hello", true, false);
        assert_eq!(decode(&tok, &ids), b" Hello", "{ids:?}");
    }
    if let Some(tok) = tok512() {
        let a = tok.lookup(b" a").unwrap();
        assert_eq!(tok.decode(tok.bos(), a), b"a");
        assert_eq!(tok.decode(a, a), b" a");
        // BOS's own piece is never printed by a decode that follows it.
        assert_eq!(tok.piece(tok.bos()), b"\n<s>\n");
    }
}

#[test]
fn edge_texts_round_trip() {
    let texts = [
        "",
        " ",
        "  ",
        "\n",
        "\n\n\n",
        " leading",
        "trailing ",
        "a  b   c",
        "\t\r\n\0\u{7f}",
        "<0x0A> is not a newline",
        "<s></s><unk>",
        "\u{1F600}\u{1F600} é中文 \u{FEFF}\u{10FFFF}",
        "x".repeat(300).as_str(),
    ]
    .map(|s| s.to_string());
    for (tok, name) in [(tok512(), "tok512"), (tok32k(), "tokenizer.bin")] {
        let Some(tok) = tok else { continue };
        for t in &texts {
            roundtrip(&tok, t).unwrap_or_else(|e| panic!("{name}: {t:?}: {e}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Round trips of arbitrary text.

/// Printable ASCII with whitespace, the bulk of real prompts.
fn ascii_text() -> impl Strategy<Value = String> {
    "[ -~\t\n]{0,80}"
}

/// Words, punctuation and runs of spaces, so merges across word boundaries are exercised.
fn wordy_text() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        "[a-z]{1,10}",
        "[A-Z][a-z]{0,8}",
        "[0-9]{1,4}",
        Just("the".to_string()),
        Just("Once upon a time".to_string()),
        Just("é".to_string()),
    ];
    let sep = prop_oneof![
        Just(" ".to_string()),
        Just(" ".to_string()),
        Just("  ".to_string()),
        Just("\n".to_string()),
        Just(", ".to_string()),
        Just(". ".to_string()),
        Just("".to_string()),
    ];
    prop::collection::vec((sep, word), 0..16).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(s, w)| format!("{s}{w}"))
            .collect::<String>()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tok512_round_trips_any_string(text in any::<String>()) {
        let Some(tok) = tok512() else { return Ok(()) };
        roundtrip(&tok, &text)?;
    }

    #[test]
    fn tok512_round_trips_ascii(text in ascii_text()) {
        let Some(tok) = tok512() else { return Ok(()) };
        roundtrip(&tok, &text)?;
    }

    #[test]
    fn tok512_round_trips_words(text in wordy_text()) {
        let Some(tok) = tok512() else { return Ok(()) };
        roundtrip(&tok, &text)?;
    }

    #[test]
    fn llama2_round_trips_any_string(text in any::<String>()) {
        let Some(tok) = tok32k() else { return Ok(()) };
        roundtrip(&tok, &text)?;
    }

    #[test]
    fn llama2_round_trips_ascii(text in ascii_text()) {
        let Some(tok) = tok32k() else { return Ok(()) };
        roundtrip(&tok, &text)?;
    }

    #[test]
    fn llama2_round_trips_words(text in wordy_text()) {
        let Some(tok) = tok32k() else { return Ok(()) };
        roundtrip(&tok, &text)?;
    }
}
