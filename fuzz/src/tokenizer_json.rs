//! The trainer's `tokenizer.json` (`Bpe::load`), then for a file it accepts: encode/decode round trips, ids
//! inside the vocabulary, the core accepting the vocabulary, and `Bpe::encode` giving exactly the core
//! encoder's ids (the property the trainer's fast path rests on).
//!
//! Input: the file as it is.

use enigma_core::Tokenizer;
use enigma_train::bpe::Bpe;

pub fn check(data: &[u8]) {
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
