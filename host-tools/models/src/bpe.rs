//! Vocabularies of merge-list BPE tokenizers (GGUF's `gpt2` model, Hugging Face's `tokenizer.json`) in the
//! core's terms: pieces as bytes, and scores that make the core's greedy "highest-scoring pair first"
//! loop apply merges in rank order.

use anyhow::Result;
use std::collections::HashMap;

/// Below the core encoder's floor of -1e10: a piece with this score is never the result of a merge, so
/// text cannot turn into a control token by spelling it.
pub const NEVER_MERGED: f32 = -1e30;
/// SentencePiece's visible space.
pub const SPM_SPACE: &str = "\u{2581}";

/// GPT-2's printable stand-ins for bytes: byte `b` is the char at index `b` ("byte-level BPE").
pub fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 256u32;
    for (b, o) in out.iter_mut().enumerate() {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        *o = if printable {
            char::from(b as u8)
        } else {
            let c = char::from_u32(extra).unwrap_or('\0');
            extra += 1;
            c
        };
    }
    out
}

/// Maps [`byte_chars`] back to their bytes.
pub fn byte_char_inverse() -> HashMap<char, u8> {
    byte_chars()
        .iter()
        .enumerate()
        .map(|(b, c)| (*c, b as u8))
        .collect()
}

/// The bytes a GPT-2-style token string stands for; `None` when a char is not one of the 256 stand-ins
/// (an added token written as plain text).
pub fn gpt2_bytes(s: &str, inverse: &HashMap<char, u8>) -> Option<Vec<u8>> {
    s.chars().map(|c| inverse.get(&c).copied()).collect()
}

/// The bytes a merge of the GPT-2-style token strings `a` and `b` makes.
pub fn gpt2_join(a: &str, b: &str, inverse: &HashMap<char, u8>) -> Vec<u8> {
    let mut joined = gpt2_bytes(a, inverse).unwrap_or_default();
    joined.extend(gpt2_bytes(b, inverse).unwrap_or_default());
    joined
}

/// A byte-level vocabulary entry: its bytes (the text itself for a special token, or one not written in
/// stand-ins) and its score before merges are ranked: a single char is reached directly (0), anything
/// longer only through a merge, which [`rank_merges`] scores.
pub fn byte_level_piece(text: &str, special: bool, inverse: &HashMap<char, u8>) -> (Vec<u8>, f32) {
    let bytes = if special {
        None
    } else {
        gpt2_bytes(text, inverse)
    };
    let single = text.chars().count() == 1;
    (
        bytes.unwrap_or_else(|| text.as_bytes().to_vec()),
        if single && !special {
            0.0
        } else {
            NEVER_MERGED
        },
    )
}

/// Scores each piece a merge makes `-rank` of the first merge that makes it; `merges` yields, in rank
/// order, the bytes each merge joins into. Special pieces keep their score.
pub fn rank_merges(
    pieces: &[Vec<u8>],
    scores: &mut [f32],
    merges: impl Iterator<Item = Result<Vec<u8>>>,
    special: impl Fn(usize) -> bool,
) -> Result<()> {
    let ids: HashMap<&[u8], usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_slice(), i))
        .collect();
    let mut ranks: Vec<(usize, f32)> = Vec::new();
    for (rank, joined) in merges.enumerate() {
        if let Some(&id) = ids.get(joined?.as_slice()) {
            ranks.push((id, -(rank as f32)));
        }
    }
    // Written last to first, so the first merge that makes a piece is its rank.
    for (id, score) in ranks.into_iter().rev() {
        if !special(id) {
            scores[id] = score;
        }
    }
    Ok(())
}
