//! Byte-level BPE trained from text, expressible exactly as a `.enigma` tokenizer.
//!
//! Vocabulary: ids `0..256` are the single bytes (so every text encodes without a fallback), then the special
//! tokens (BOS, EOS, PAD and the chat markers), then one piece per learned merge, in merge order. Merge `i`
//! gets score `-i`, so the core's encoder (merge the adjacent pair whose joined piece scores highest, leftmost
//! first) applies merges in the order they were learned. Specials score far below the core's floor (-1e10),
//! so text never merges into them.
//!
//! Training splits text into words: a boundary before every space and on both sides of every newline. No
//! learned piece therefore holds a space after its first byte or a newline beside anything, so no piece can
//! span a boundary and encoding word by word (with a cache) gives exactly what the core's loop gives on the
//! whole text. A merge whose piece would equal a special, or start with BOS's piece, is skipped: the core's
//! loop also tries to merge BOS with the first piece of the text.

use anyhow::{bail, ensure, Context, Result};
use enigma_core::format::ChatTokens;
use enigma_core::tokenizer::{VocabBudget, MAX_PIECE_BYTES, MAX_PIECE_LEN, MAX_VOCAB};
use enigma_runtime::TokenizerData;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::Path;

/// The pieces of the special tokens, at ids `256..261` in this order.
pub const SPECIALS: [&str; 5] = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"];
pub const BOS: u32 = 256;
pub const EOS: u32 = 257;
pub const PAD: u32 = 258;
pub const USER: u32 = 259;
pub const ASSISTANT: u32 = 260;
/// The id of the first learned merge.
pub const FIRST_MERGE: u32 = 256 + SPECIALS.len() as u32;
/// Below the core encoder's floor of -1e10: never chosen as a merge.
const SPECIAL_SCORE: f32 = -1e30;
/// A pair must occur at least this often to be merged.
const MIN_PAIR_COUNT: u64 = 2;

/// A trained tokenizer: its merges and the pieces they build.
#[derive(Clone, Debug)]
pub struct Bpe {
    /// (V) bytes of each token
    pieces: Vec<Vec<u8>>,
    /// Merge `i` joins these two ids into id `FIRST_MERGE + i`.
    merges: Vec<(u32, u32)>,
    /// Every piece's id, specials included (the core looks them up too).
    ids: HashMap<Vec<u8>, u32>,
}

/// The tokenizer file: the merges are the tokenizer; pieces and scores follow from them.
#[derive(Serialize, Deserialize)]
struct TokFile {
    format: String,
    version: u32,
    /// Pieces of ids 256.. (BOS, EOS, PAD, user, assistant).
    specials: Vec<String>,
    /// `[left, right]` ids, in merge order.
    merges: Vec<[u32; 2]>,
}

const FORMAT: &str = "enigma-bpe";

/// Splits text at word boundaries: before a space, and on both sides of a newline.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            i += 1;
            if i == b.len() || b[i] == b' ' || b[i] == b'\n' || b[i - 1] == b'\n' {
                let w = &text[start..i];
                start = i;
                return Some(w);
            }
        }
        None
    })
}

/// Whether a piece holds a boundary of [`words`] inside it (at any byte but its first). Training merges only
/// within words, so it never makes one; a file that has one would make `Bpe::encode` (word by word) and the
/// core's encoder (whole text) disagree, training a model on other tokens than it is run with.
fn spans_words(p: &[u8]) -> bool {
    (1..p.len()).any(|i| p[i] == b' ' || p[i] == b'\n' || p[i - 1] == b'\n')
}

impl Bpe {
    /// The 256 bytes and the specials, no merges.
    fn base() -> Bpe {
        let mut pieces: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        pieces.extend(SPECIALS.iter().map(|s| s.as_bytes().to_vec()));
        let ids = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        Bpe {
            pieces,
            merges: Vec::new(),
            ids,
        }
    }

    /// Learns merges from `texts` until the vocabulary has `vocab_size` tokens or no pair occurs twice.
    pub fn train(texts: &[&str], vocab_size: usize) -> Result<Bpe> {
        ensure!(
            vocab_size >= FIRST_MERGE as usize,
            "--vocab-size must be at least {FIRST_MERGE} (256 bytes and {} special tokens)",
            SPECIALS.len()
        );
        ensure!(
            vocab_size <= MAX_VOCAB,
            "--vocab-size must be at most {MAX_VOCAB}"
        );
        let mut bpe = Bpe::base();
        // Word counts, then one symbol sequence per distinct word.
        let counts = texts
            .par_iter()
            .map(|t| {
                let mut m: HashMap<&str, u64> = HashMap::new();
                for w in words(t) {
                    *m.entry(w).or_default() += 1;
                }
                m
            })
            .reduce(HashMap::new, |mut a, b| {
                for (w, c) in b {
                    *a.entry(w).or_default() += c;
                }
                a
            });
        let mut distinct: Vec<(&str, u64)> = counts.into_iter().collect();
        // A fixed order, so training is deterministic.
        distinct.sort_unstable();
        let mut syms: Vec<Vec<u32>> = distinct
            .iter()
            .map(|(w, _)| w.bytes().map(u32::from).collect())
            .collect();
        let freq: Vec<u64> = distinct.iter().map(|(_, c)| *c).collect();

        type Pair = (u32, u32);
        let mut pair_count: HashMap<Pair, u64> = HashMap::new();
        let mut where_: HashMap<Pair, HashSet<usize>> = HashMap::new();
        for (wi, s) in syms.iter().enumerate() {
            for p in s.windows(2) {
                *pair_count.entry((p[0], p[1])).or_default() += freq[wi];
                where_.entry((p[0], p[1])).or_default().insert(wi);
            }
        }
        // Highest count first; on equal counts the smallest pair, so the order is deterministic.
        let mut heap: BinaryHeap<(u64, Reverse<Pair>)> =
            pair_count.iter().map(|(p, c)| (*c, Reverse(*p))).collect();
        let mut forbidden: HashSet<Pair> = HashSet::new();
        let bos_piece = SPECIALS[0].as_bytes();
        let mut piece_bytes: usize = bpe.pieces.iter().map(Vec::len).sum();
        while bpe.pieces.len() < vocab_size {
            let Some((c, Reverse(pair))) = heap.pop() else {
                break;
            };
            if pair_count.get(&pair).copied() != Some(c) || forbidden.contains(&pair) {
                continue; // stale entry
            }
            if c < MIN_PAIR_COUNT {
                break;
            }
            // What the loader refuses, training never makes: pieces stay within the length limit (long
            // runs without spaces would otherwise double one each merge), all of them within the total.
            let len = bpe.pieces[pair.0 as usize].len() + bpe.pieces[pair.1 as usize].len();
            if len > MAX_PIECE_LEN {
                forbidden.insert(pair);
                continue;
            }
            if piece_bytes + len > MAX_PIECE_BYTES {
                break;
            }
            let mut joined = bpe.pieces[pair.0 as usize].clone();
            joined.extend_from_slice(&bpe.pieces[pair.1 as usize]);
            if SPECIALS.iter().any(|s| s.as_bytes() == joined) || joined.starts_with(bos_piece) {
                forbidden.insert(pair);
                continue;
            }
            // The same bytes may already be a piece (built from another pair); reuse it.
            let id = match bpe.ids.get(&joined) {
                Some(&id) => id,
                None => {
                    let id = bpe.pieces.len() as u32;
                    piece_bytes += joined.len();
                    bpe.ids.insert(joined.clone(), id);
                    bpe.pieces.push(joined);
                    bpe.merges.push(pair);
                    id
                }
            };
            let affected: Vec<usize> = where_
                .remove(&pair)
                .map(|s| s.into_iter().collect())
                .unwrap_or_default();
            let mut changed: HashSet<Pair> = HashSet::new();
            for wi in affected {
                let s = &mut syms[wi];
                if !s.windows(2).any(|p| (p[0], p[1]) == pair) {
                    continue;
                }
                for p in s.windows(2) {
                    let e = pair_count.entry((p[0], p[1])).or_default();
                    *e -= freq[wi];
                    changed.insert((p[0], p[1]));
                }
                let mut out = Vec::with_capacity(s.len());
                let mut i = 0;
                while i < s.len() {
                    if i + 1 < s.len() && (s[i], s[i + 1]) == pair {
                        out.push(id);
                        i += 2;
                    } else {
                        out.push(s[i]);
                        i += 1;
                    }
                }
                *s = out;
                for p in s.windows(2) {
                    *pair_count.entry((p[0], p[1])).or_default() += freq[wi];
                    where_.entry((p[0], p[1])).or_default().insert(wi);
                    changed.insert((p[0], p[1]));
                }
            }
            for p in changed {
                match pair_count.get(&p).copied() {
                    Some(0) => {
                        pair_count.remove(&p);
                    }
                    Some(c) => heap.push((c, Reverse(p))),
                    None => {}
                }
            }
        }
        Ok(bpe)
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], |p| p.as_slice())
    }

    fn score(&self, id: u32) -> f32 {
        if id < 256 {
            0.0
        } else if id < FIRST_MERGE {
            SPECIAL_SCORE
        } else {
            -((id - FIRST_MERGE) as f32)
        }
    }

    /// The vocabulary as the `.enigma` writer takes it.
    pub fn data(&self) -> TokenizerData {
        TokenizerData {
            pieces: self.pieces.clone(),
            scores: (0..self.pieces.len() as u32)
                .map(|i| self.score(i))
                .collect(),
            bos: BOS,
            eos: EOS,
            pad: Some(PAD),
            add_dummy_prefix: false,
            chat: Some(reserved_chat_markers()),
            split: enigma_core::pretok::Split::None,
            added: Vec::new(),
        }
    }

    /// One token per character of `w`: its piece if it has one, else its bytes.
    fn pre_tokenize(&self, w: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(w.len());
        let mut buf = [0u8; 4];
        for ch in w.chars() {
            let b = ch.encode_utf8(&mut buf).as_bytes();
            match self.ids.get(b) {
                Some(&id) => out.push(id),
                None => out.extend(b.iter().map(|&x| u32::from(x))),
            }
        }
        out
    }

    /// The token `a` then `b` merge into and its score; never a special (their scores are below the core's
    /// floor of -1e10).
    fn merge_pair(&self, a: u32, b: u32) -> Option<(u32, f32)> {
        let mut joined = Vec::with_capacity(self.piece(a).len() + self.piece(b).len());
        joined.extend_from_slice(self.piece(a));
        joined.extend_from_slice(self.piece(b));
        let id = *self.ids.get(joined.as_slice())?;
        let score = self.score(id);
        (score > -1e10).then_some((id, score))
    }

    /// The core's encoding of one word: one token per character, then the highest-scoring adjacent merge,
    /// leftmost first, until none applies. In O(n log n): words without spaces can be megabytes long
    /// (base64, minified code, CJK lines).
    fn encode_word(&self, w: &str, out: &mut Vec<u32>) {
        out.extend(enigma_runtime::tokenize::merge(
            self.pre_tokenize(w),
            |a, b| self.merge_pair(a, b),
        ));
    }

    /// Token ids of `text` (no BOS/EOS), exactly as `enigma_core::Tokenizer::encode` gives them. Long texts
    /// are split at newlines and encoded in parallel; each part caches the words it has seen.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        const PART: usize = 1 << 18;
        let mut parts = Vec::new();
        let mut rest = text;
        while rest.len() > PART {
            // Cut after a newline: a word boundary.
            let cut = rest.as_bytes()[PART..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| PART + i + 1);
            let Some(cut) = cut else { break };
            let (a, b) = rest.split_at(cut);
            parts.push(a);
            rest = b;
        }
        parts.push(rest);
        let encoded: Vec<Vec<u32>> = parts
            .par_iter()
            .map(|part| {
                let mut cache: HashMap<&str, (usize, usize)> = HashMap::new();
                let mut out = Vec::with_capacity(part.len() / 3);
                for w in words(part) {
                    if let Some(&(a, n)) = cache.get(w) {
                        out.extend_from_within(a..a + n);
                    } else {
                        let a = out.len();
                        self.encode_word(w, &mut out);
                        cache.insert(w, (a, out.len() - a));
                    }
                }
                out
            })
            .collect();
        encoded.concat()
    }

    /// The bytes of `ids` joined (specials as their pieces).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&i| self.piece(i).iter().copied())
            .collect()
    }

    /// Writes the tokenizer file (JSON: the specials and the merges).
    pub fn save(&self, path: &Path) -> Result<()> {
        let f = TokFile {
            format: FORMAT.into(),
            version: 1,
            specials: SPECIALS.iter().map(|s| s.to_string()).collect(),
            merges: self.merges.iter().map(|&(a, b)| [a, b]).collect(),
        };
        let json = serde_json::to_vec(&f)?;
        enigma_runtime::fsutil::atomic_write(path, &json)?;
        Ok(())
    }

    /// Reads a tokenizer file written by [`Bpe::save`], checking every merge.
    pub fn load(path: &Path) -> Result<Bpe> {
        let bytes = enigma_runtime::load::read_file(path)?;
        let f: TokFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not an enigma tokenizer file", path.display()))?;
        let bad = |why: String| anyhow::anyhow!("{}: {why}", path.display());
        if f.format != FORMAT || f.version != 1 {
            return Err(bad(format!(
                "format {} version {} is not {FORMAT} version 1",
                f.format, f.version
            )));
        }
        if f.specials != SPECIALS {
            return Err(bad(format!(
                "special tokens {:?} are not {SPECIALS:?}",
                f.specials
            )));
        }
        let mut bpe = Bpe::base();
        let mut budget = VocabBudget::default();
        for p in &bpe.pieces {
            budget.add(p.len())?;
        }
        for (i, [a, b]) in f.merges.into_iter().enumerate() {
            let n = bpe.pieces.len() as u32;
            let ok = |x: u32| x < n && !(256..FIRST_MERGE).contains(&x);
            if !ok(a) || !ok(b) {
                return Err(bad(format!(
                    "merge {i} names a token that does not exist before it: [{a}, {b}]"
                )));
            }
            // Counted before the piece is built: merges that double a piece each time would otherwise
            // allocate gigabytes from a file of a few hundred bytes.
            budget
                .add(bpe.pieces[a as usize].len() + bpe.pieces[b as usize].len())
                .map_err(|e| bad(format!("merge {i}: {e}")))?;
            let mut joined = bpe.pieces[a as usize].clone();
            joined.extend_from_slice(&bpe.pieces[b as usize]);
            if bpe.ids.contains_key(&joined) {
                return Err(bad(format!(
                    "merge {i} repeats the piece {:?}",
                    String::from_utf8_lossy(&joined)
                )));
            }
            if spans_words(&joined) {
                return Err(bad(format!(
                    "merge {i} joins across a word boundary (a space or a newline inside the piece {:?}), \
                     which training never does",
                    String::from_utf8_lossy(&joined)
                )));
            }
            bpe.ids.insert(joined.clone(), n);
            bpe.pieces.push(joined);
            bpe.merges.push((a, b));
        }
        Ok(bpe)
    }

    /// The tokenizer of a `.enigma` file, when it is one of ours (bytes, then our specials, then merges);
    /// the merges are recovered from the pieces.
    pub fn from_data(data: &TokenizerData) -> Option<Bpe> {
        let mut bpe = Bpe::base();
        if data.pieces.len() < FIRST_MERGE as usize
            || data.pieces[..FIRST_MERGE as usize] != bpe.pieces[..]
            || (data.bos, data.eos, data.pad, data.add_dummy_prefix) != (BOS, EOS, Some(PAD), false)
            // The markers are reserved either way; a model trained on text only does not advertise them.
            || data.chat.is_some_and(|c| c != reserved_chat_markers())
        {
            return None;
        }
        for p in &data.pieces[FIRST_MERGE as usize..] {
            // Not one of ours: the core's encoder, not the word-by-word one, is its reference.
            if spans_words(p) {
                return None;
            }
            // The split into two earlier pieces; the left one as long as possible, as training made it.
            let split = (1..p.len()).rev().find_map(|k| {
                let a = bpe.ids.get(&p[..k])?;
                let b = bpe.ids.get(&p[k..])?;
                (*a < 256 || *a >= FIRST_MERGE).then_some(())?;
                (*b < 256 || *b >= FIRST_MERGE).then_some((*a, *b))
            })?;
            let id = bpe.pieces.len() as u32;
            if bpe.ids.insert(p.clone(), id).is_some() {
                return None;
            }
            bpe.pieces.push(p.clone());
            bpe.merges.push(split);
        }
        (bpe.data().scores == data.scores).then_some(bpe)
    }
}

/// Checks that a tokenizer has what chat data needs.
/// The chat markers every vocabulary we train reserves.
pub fn reserved_chat_markers() -> ChatTokens {
    ChatTokens {
        user: USER,
        assistant: ASSISTANT,
    }
}

pub fn chat_markers(data: &TokenizerData) -> Result<ChatTokens> {
    match data.chat {
        Some(c) => Ok(c),
        None => bail!(
            "the tokenizer has no user/assistant markers, so conversations cannot be rendered"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_before_spaces_and_around_newlines() {
        let w: Vec<&str> = words("ab cd\n\nef  g").collect();
        assert_eq!(w, ["ab", " cd", "\n", "\n", "ef", " ", " g"]);
        assert_eq!(words("").count(), 0);
        assert_eq!(words(" x").collect::<Vec<_>>(), [" x"]);
    }

    #[test]
    fn training_learns_frequent_pairs_and_never_a_special() {
        let text = "<s>hello <s>hello the the the <pad> <pad> <pad>\n".repeat(20);
        let bpe = Bpe::train(&[&text], 300).unwrap();
        assert!(bpe.vocab_size() > FIRST_MERGE as usize);
        for (i, p) in bpe.pieces.iter().enumerate().skip(FIRST_MERGE as usize) {
            assert!(
                !p.starts_with(b"<s>"),
                "piece {i} {:?}",
                String::from_utf8_lossy(p)
            );
            assert!(!SPECIALS.iter().any(|s| s.as_bytes() == p.as_slice()));
        }
        // Frequent words became single pieces.
        let ids = bpe.encode(" the the");
        assert_eq!(bpe.decode(&ids), b" the the");
        assert_eq!(ids.len(), 2, "{ids:?}");
    }

    /// The quadratic loop `encode_word` used to be, kept as the reference it must agree with.
    fn encode_word_quadratic(bpe: &Bpe, w: &str) -> Vec<u32> {
        let mut out = bpe.pre_tokenize(w);
        loop {
            let mut best: Option<(f32, u32, usize)> = None;
            for i in 0..out.len().saturating_sub(1) {
                if let Some((id, score)) = bpe.merge_pair(out[i], out[i + 1]) {
                    if score > best.map_or(-1e10, |b| b.0) {
                        best = Some((score, id, i));
                    }
                }
            }
            let Some((_, id, i)) = best else { break };
            out[i] = id;
            out.remove(i + 1);
        }
        out
    }

    #[test]
    fn encode_word_matches_the_quadratic_loop_on_random_words() {
        let alphabet = ["a", "b", "ab", "é", "<", "s", ">", "aa", "ba", "日"];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut word =
            |len: usize| -> String { (0..len).map(|_| alphabet[rand(alphabet.len())]).collect() };
        let corpus: Vec<String> = (0..400).map(|i| word(1 + i % 23)).collect();
        let text = corpus.join(" ");
        let bpe = Bpe::train(&[&text], 400).unwrap();
        assert!(bpe.merges().len() > 50);
        for len in (0..300).chain([1000, 3000]) {
            let w = word(len % 40 + len / 100);
            let mut fast = Vec::new();
            bpe.encode_word(&w, &mut fast);
            assert_eq!(fast, encode_word_quadratic(&bpe, &w), "{w:?}");
        }
    }

    /// 100,000 'A's in one JSONL message took over two minutes: every merge rescanned the whole word.
    #[test]
    fn encode_word_is_not_quadratic_on_a_long_run_without_spaces() {
        let bpe = Bpe::train(&["AAAA AAAAAAAA AAAA AA AAA ".repeat(50).as_str()], 300).unwrap();
        let w = "A".repeat(100_000);
        let start = std::time::Instant::now();
        let ids = bpe.encode(&w);
        let took = start.elapsed();
        assert_eq!(bpe.decode(&ids), w.as_bytes());
        assert!(ids.len() < 50_000, "{}", ids.len());
        assert!(took.as_secs_f64() < 5.0, "{took:?}");
    }

    /// 607 bytes of tokenizer.json whose merges each double a piece allocated gigabytes.
    #[test]
    fn a_tokenizer_file_of_doubling_merges_is_refused_at_the_piece_length_limit() {
        let mut merges = vec![[97u32, 97]];
        for i in 0..60 {
            let id = FIRST_MERGE + i;
            merges.push([id, id]);
        }
        let json = serde_json::json!({
            "format": FORMAT, "version": 1, "specials": SPECIALS, "merges": merges
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1000);
        let err = format!("{:#}", Bpe::load(&path).unwrap_err());
        assert!(
            err.contains("length of a piece") && err.contains("1024"),
            "{err}"
        );
        assert!(
            err.contains("merge 10"),
            "the first merge past 1024 bytes: {err}"
        );
    }

    /// Found by the `tokenizer_json` fuzz target: `[44, " the"]` made ", the", which the core's encoder
    /// merged in "time, there" and `Bpe::encode` (word by word) could not.
    #[test]
    fn a_merge_across_a_word_boundary_is_refused() {
        let merges = [[32u32, 116], [104, 101], [261, 262], [44, 263]];
        let json = serde_json::json!({
            "format": FORMAT, "version": 1, "specials": SPECIALS, "merges": merges
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json.to_string()).unwrap();
        let err = format!("{:#}", Bpe::load(&path).unwrap_err());
        assert!(
            err.contains("merge 3") && err.contains("word boundary"),
            "{err}"
        );
        // Without the last merge the file is one training could write, and both encoders agree.
        let json = serde_json::json!({
            "format": FORMAT, "version": 1, "specials": SPECIALS, "merges": &merges[..3]
        });
        std::fs::write(&path, json.to_string()).unwrap();
        let bpe = Bpe::load(&path).unwrap();
        assert_eq!(
            bpe.encode("a time, there"),
            [97, 261, 105, 109, 101, 44, 263, 114, 101]
        );
        // A .enigma vocabulary with such a piece is left to the core's encoder.
        let mut data = bpe.data();
        data.pieces.push(b", the".to_vec());
        data.scores.push(-1.0);
        assert!(Bpe::from_data(&data).is_none());
    }

    #[test]
    fn training_never_makes_a_piece_the_loader_would_refuse() {
        let text = format!("{}\n", "A".repeat(5000)).repeat(4);
        let bpe = Bpe::train(&[&text], 400).unwrap();
        assert!(bpe.pieces.iter().all(|p| p.len() <= MAX_PIECE_LEN));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        bpe.save(&path).unwrap();
        assert_eq!(Bpe::load(&path).unwrap().pieces, bpe.pieces);
    }
}
