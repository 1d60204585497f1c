//! The trainer's `tokenizer.json` (`Bpe::load`), then for a file it accepts: encode/decode round trips, ids
//! inside the vocabulary, the core accepting the vocabulary, and `Bpe::encode` giving exactly the core
//! encoder's ids (the property the trainer's fast path rests on).
//!
//! Input: the file as it is.

use enigma_core::Tokenizer;
use enigma_train::bpe::{Bpe, FIRST_MERGE, SPECIALS};

/// Pieces longer than this, or more piece bytes than [`MAX_TOTAL`] in all, are the merge-doubling memory
/// bomb of issue 12 point 2 (being fixed on the `hardening` branch).
const MAX_PIECE: u64 = 1 << 16;
const MAX_TOTAL: u64 = 64 << 20;

pub fn check(data: &[u8]) {
    if crate::known_issue(piece_bomb(data), "tokenizer.json piece-length bomb (12.2)") {
        return;
    }
    let path = crate::scratch_file("tokenizer.json", data);
    let Ok(bpe) = Bpe::load(&path) else {
        return;
    };
    let d = bpe.data();
    let v = bpe.vocab_size();
    assert_eq!(d.pieces.len(), v);
    assert_eq!(d.scores.len(), v);
    // The core's arrays, as `Vocab::from_data` builds them for a foreign tokenizer.
    let mut pieces = Vec::new();
    let mut offsets = vec![0u32];
    for p in &d.pieces {
        pieces.extend_from_slice(p);
        offsets.push(pieces.len() as u32);
    }
    let mut sorted: Vec<u32> = (0..v as u32).collect();
    sorted.sort_by(|&a, &b| d.pieces[a as usize].cmp(&d.pieces[b as usize]));
    let core = match Tokenizer::new(d.meta(), &pieces, &offsets, &d.scores, &sorted) {
        Ok(t) => t,
        Err(e) => panic!("the core refuses a tokenizer Bpe::load accepted: {e}"),
    };
    let tail = &data[data.len().saturating_sub(64)..];
    for text in [
        "Once upon a time, there was a <s> <|user|> cat.\n\nThe end ".to_string(),
        crate::text_of(tail, 64),
    ] {
        let ids = bpe.encode(&text);
        assert!(
            ids.iter().all(|&i| (i as usize) < v),
            "id outside the vocabulary"
        );
        assert_eq!(bpe.decode(&ids), text.as_bytes(), "decode(encode(x)) != x");
        match enigma_runtime::tokenize::encode(&core, &text, false, false) {
            Ok(fast) => assert_eq!(ids, fast, "Bpe::encode and the core disagree on {text:?}"),
            Err(e) => panic!("the core cannot encode what Bpe encodes: {e}"),
        }
    }
}

/// Whether the merges build a piece longer than [`MAX_PIECE`] or more than [`MAX_TOTAL`] bytes of pieces,
/// following `Bpe::load`'s rules as far as it would get (it stops at the first merge naming a token that
/// does not exist yet).
fn piece_bomb(data: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return false;
    };
    let Some(merges) = v.get("merges").and_then(|m| m.as_array()) else {
        return false;
    };
    let mut lens: Vec<u64> = vec![1; 256];
    lens.extend(SPECIALS.iter().map(|s| s.len() as u64));
    let mut total = 0u64;
    for m in merges {
        let pair = m.as_array().and_then(|p| match p.as_slice() {
            [a, b] => Some((a.as_u64()?, b.as_u64()?)),
            _ => None,
        });
        let Some((a, b)) = pair else { return false };
        let ok = |x: u64| x < lens.len() as u64 && !(256..FIRST_MERGE as u64).contains(&x);
        if !ok(a) || !ok(b) {
            return false;
        }
        let len = lens[a as usize] + lens[b as usize];
        total += len;
        if len > MAX_PIECE || total > MAX_TOTAL {
            return true;
        }
        lens.push(len);
    }
    false
}
