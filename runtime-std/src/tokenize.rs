//! Encoding long texts: the same ids as the core's llama2.c-style merge loop, in O(n log n).

use crate::Result;
use enigma_core::{Error, Tokenizer};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A candidate merge of the pair starting at node `left`. The heap pops the highest score first and, on
/// equal scores, the leftmost pair: nodes keep their original indices, which are in sequence order, so
/// this picks exactly the pair the quadratic loop would.
struct Cand {
    score: f32,
    left: usize,
    right: usize,
    id: u32,
}

impl PartialEq for Cand {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

/// Encodes `text` like [`Tokenizer::encode`], without its quadratic cost.
pub fn encode(tok: &Tokenizer<'_>, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>> {
    let mut ids = vec![0u32; Tokenizer::max_tokens(text.len())];
    let n = tok.encode_by(text, bos, eos, &mut ids, &mut |run, len| {
        let merged = merge(run[..len].to_vec(), |a, b| tok.merge_pair(a, b));
        run[..merged.len()].copy_from_slice(&merged);
        merged.len()
    })?;
    ids.truncate(n);
    Ok(ids)
}

/// The core's merge loop ([`Tokenizer::merge`]) in O(n log n): repeatedly merges the adjacent pair whose
/// merged token scores highest, leftmost on ties, until none merges. `merge_pair(a, b)` is the token that
/// `a` then `b` merge into and its score, or `None`. Shared by every host-side BPE encoder.
pub fn merge(mut ids: Vec<u32>, merge_pair: impl Fn(u32, u32) -> Option<(u32, f32)>) -> Vec<u32> {
    let n = ids.len();
    // A doubly linked list over the pre-tokens; `alive[i]` goes false when node i is merged into its left.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Cand>, ids: &[u32], left: usize, right: usize| {
        if let Some((id, score)) = merge_pair(ids[left], ids[right]) {
            heap.push(Cand {
                score,
                left,
                right,
                id,
            });
        }
    };
    for i in 1..n {
        push(&mut heap, &ids, i - 1, i);
    }
    while let Some(c) = heap.pop() {
        // Stale when either side was merged away or changed since the candidate was made.
        if !alive[c.left] || !alive[c.right] || next[c.left] != c.right {
            continue;
        }
        if merge_pair(ids[c.left], ids[c.right]).map(|m| m.0) != Some(c.id) {
            continue;
        }
        ids[c.left] = c.id;
        alive[c.right] = false;
        let after = next[c.right];
        next[c.left] = after;
        if after < n {
            prev[after] = c.left;
            push(&mut heap, &ids, c.left, after);
        }
        let before = prev[c.left];
        if before < n {
            push(&mut heap, &ids, before, c.left);
        }
    }
    (0..n).filter(|&i| alive[i]).map(|i| ids[i]).collect()
}

/// [`encode`] for a text that must fit in `max` tokens: one that cannot (by its length in bytes) is refused
/// before any encoding work, and one that does not is refused as soon as its tokens are counted. Untrusted
/// prompts go through here, so a huge one costs a length check, not an encoding.
pub fn encode_within(
    tok: &Tokenizer<'_>,
    text: &str,
    bos: bool,
    eos: bool,
    max: usize,
) -> Result<Vec<u32>> {
    let least = tok.min_tokens(text.len(), bos, eos);
    if least > max {
        return Err(Error::PromptBytesTooLong {
            bytes: text.len(),
            tokens: least,
            max,
        }
        .into());
    }
    let mut ids = encode(tok, text, bos, eos)?;
    // A vocabulary without BOS and an empty prompt: the model still needs one token to start from.
    if bos && ids.is_empty() {
        ids.push(tok.bos());
    }
    if ids.len() > max {
        return Err(Error::PromptTooLong {
            tokens: ids.len(),
            max,
        }
        .into());
    }
    Ok(ids)
}
