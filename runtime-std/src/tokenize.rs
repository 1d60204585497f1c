//! Encoding long texts: the same ids as the core's llama2.c-style merge loop, in O(n log n).

use crate::Result;
use enigma_core::Tokenizer;
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
    let n = tok.pre_tokenize(text, bos, &mut ids)?;
    ids.truncate(n);
    // A doubly linked list over the pre-tokens; `alive[i]` goes false when node i is merged into its left.
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    let mut alive = vec![true; n];
    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Cand>, ids: &[u32], left: usize, right: usize| {
        if let Some((id, score)) = tok.merge_pair(ids[left], ids[right]) {
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
        if tok.merge_pair(ids[c.left], ids[c.right]).map(|m| m.0) != Some(c.id) {
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
    let mut out: Vec<u32> = (0..n).filter(|&i| alive[i]).map(|i| ids[i]).collect();
    if eos {
        out.push(tok.eos());
    }
    Ok(out)
}
