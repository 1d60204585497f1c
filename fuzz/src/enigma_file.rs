//! The `.enigma` reader: `ModelFile::from_bytes` (prelude, header, tensor table, data CRC), the model and
//! tokenizer views over it, both encoders, decoding, and one short forward pass.
//!
//! Input: one mode byte, then the file. Mode bit 0 rewrites the header CRC and bit 1 the data CRC before
//! reading, so that mutations reach the header's and the tensors' contents instead of dying at a checksum
//! (a hostile file has correct CRCs too); with both bits clear the checksums themselves are fuzzed.

use enigma_core::config::Config;
use enigma_core::format::{EnigmaFile, Header, PRELUDE_LEN};
use enigma_core::kernels::kernels;
use enigma_core::{Serial, Tokenizer};
use enigma_runtime::{AlignedBytes, HostSession, ModelFile};

pub fn check(data: &[u8]) {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut bytes = file.to_vec();
    if mode & 1 != 0 {
        fix_header_crc(&mut bytes);
    }
    if mode & 2 != 0 {
        fix_data_crc(&mut bytes);
    }
    let Ok(mf) = ModelFile::from_bytes(&bytes, "fuzz.enigma") else {
        return;
    };
    let Ok(model) = mf.model(kernels()) else {
        return;
    };
    let tok = model.tokenizer;
    let c = model.transformer.config;
    // A vocabulary without byte fallback may not cover the sample; BOS and EOS are always in range
    // (the reader checks), so the forward pass runs either way.
    let ids = encode_both(&tok, &text_sample(file)).unwrap_or_else(|| vec![tok.bos(), tok.eos()]);
    for &id in &ids {
        assert!(
            (id as usize) < tok.vocab_size(),
            "id {id} outside the vocabulary"
        );
    }
    let mut prev = tok.bos();
    for &id in &ids {
        let _ = tok.decode(prev, id);
        prev = id;
    }
    forward(&model.transformer, &c, &ids);
}

/// A few fixed texts and the tail of the input, as text.
fn text_sample(file: &[u8]) -> String {
    let tail = &file[file.len().saturating_sub(48)..];
    format!(
        "Once upon a time, é ü 日本 \u{1F600}\n\t{}",
        crate::text_of(tail, 48)
    )
}

/// Encodes `text` with the core's loop and the runtime's O(n log n) encoder, asserting they agree.
fn encode_both(tok: &Tokenizer<'_>, text: &str) -> Option<Vec<u32>> {
    let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
    let core = tok.encode(text, true, true, &mut out).map(|n| &out[..n]);
    let fast = enigma_runtime::tokenize::encode(tok, text, true, true);
    match (core, fast) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, &b[..], "the two encoders disagree on {text:?}");
            Some(b)
        }
        (Err(_), Err(_)) => None,
        (a, b) => panic!("one encoder failed: core {a:?}, runtime {b:?}"),
    }
}

/// What `run` does with a model from a file: buffers sized to the prompt and `-n` (`with_context`), not to
/// the context the header declares, allocated fallibly (issue 12 point 5). (`chat`'s buffers for the whole
/// context are checked against the machine's free memory, not a property of the file; not fuzzed here.)
fn forward(model: &enigma_core::Transformer<'_>, c: &Config, ids: &[u32]) {
    let chunk = 4;
    let n = ids.len().min(6);
    let sized = model.with_context(n + 1);
    let Ok(mut host) = HostSession::try_new(&sized, chunk) else {
        return;
    };
    let Ok(mut s) = host.session(sized) else {
        return;
    };
    let n = n.min(sized.config.seq_len as usize);
    if s.feed(&Serial, &ids[..n]).is_ok() {
        assert_eq!(s.logits().len(), c.vocab_size as usize);
    }
}

fn fix_header_crc(bytes: &mut [u8]) {
    if bytes.len() < PRELUDE_LEN {
        return;
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let Some(header) = bytes.get(PRELUDE_LEN..PRELUDE_LEN.saturating_add(len)) else {
        return;
    };
    let crc = crc32fast::hash(header);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Re-encodes the header with the CRC of the data as it is, when the header still fits before the data.
fn fix_data_crc(bytes: &mut Vec<u8>) {
    let aligned = AlignedBytes::copy_from(bytes);
    let Ok(f) = EnigmaFile::parse(&aligned) else {
        return;
    };
    let h: &Header<'_> = f.header();
    let (start, end) = (
        h.data_offset as usize,
        (h.data_offset + h.data_len) as usize,
    );
    let mut h = h.clone();
    h.data_crc32 = crc32fast::hash(&aligned[start..end]);
    let Ok(enc) = postcard::to_allocvec(&h) else {
        return;
    };
    if PRELUDE_LEN + enc.len() > start {
        return;
    }
    let mut out = bytes[..PRELUDE_LEN].to_vec();
    out[8..12].copy_from_slice(&(enc.len() as u32).to_le_bytes());
    out[12..16].copy_from_slice(&crc32fast::hash(&enc).to_le_bytes());
    out.extend_from_slice(&enc);
    out.resize(start, 0);
    out.extend_from_slice(&bytes[start..]);
    *bytes = out;
}
