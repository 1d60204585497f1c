//! Training data: plain text cut into windows, and conversations rendered with the chat template.
//!
//! Every example is `T + 1` tokens and a mask over its `T` targets. Plain text is one token stream per file
//! (BOS first) cut into consecutive windows; a conversation is one example, rendered exactly as `enigma chat`
//! feeds a model (`BOS [system] (USER text ASSISTANT reply EOS)*`), with the loss on the replies and their EOS
//! only, then padded with PAD (masked out) or cut to `T + 1` tokens.
//!
//! The order of examples is a seeded shuffle per epoch, so the data position of a run is one number (examples
//! consumed) that a checkpoint stores and a resumed run continues from.

use super::model::Batch;
use anyhow::{bail, Context, Result};
use enigma_core::format::ChatTokens;
use enigma_runtime::TokenizerData;
use std::path::{Path, PathBuf};

/// How a data file is read.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum DataFormat {
    /// `.jsonl` files are conversations, files whose first line starts with `Q:` are Q/A pairs, others text.
    Auto,
    /// Plain text.
    Text,
    /// One conversation per line: `{"messages": [{"role": "user", "content": "..."}, ...]}`.
    Jsonl,
    /// `Q:` and `A:` lines; a blank line ends a conversation.
    Qa,
}

pub use enigma_chat::Role;

/// One conversation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversation {
    pub turns: Vec<(Role, String)>,
}

/// The contents of the data files.
#[derive(Debug, Default)]
pub struct Corpus {
    /// One text per plain-text file.
    pub texts: Vec<String>,
    pub chats: Vec<Conversation>,
    /// Lines in all files (the small-data rule counts these).
    pub lines: usize,
    pub files: Vec<PathBuf>,
}

impl Corpus {
    /// Every piece of text in the corpus, for training a tokenizer.
    pub fn all_text(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.texts.iter().map(|s| s.as_str()).collect();
        for c in &self.chats {
            out.extend(c.turns.iter().map(|(_, t)| t.as_str()));
        }
        out
    }
}

/// Reads every file in `paths` as `format`.
pub fn read_corpus(paths: &[PathBuf], format: DataFormat) -> Result<Corpus> {
    if paths.is_empty() {
        bail!("no data: give at least one --data FILE");
    }
    let mut c = Corpus::default();
    for path in paths {
        let bytes = enigma_runtime::load::read_file(path)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        c.lines += text.lines().count();
        let fmt = match format {
            DataFormat::Auto => detect(path, &text),
            f => f,
        };
        match fmt {
            DataFormat::Text | DataFormat::Auto => c.texts.push(text),
            DataFormat::Jsonl => c.chats.extend(parse_jsonl(path, &text)?),
            DataFormat::Qa => c.chats.extend(parse_qa(&text)),
        }
        c.files.push(path.clone());
    }
    Ok(c)
}

fn detect(path: &Path, text: &str) -> DataFormat {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
    {
        return DataFormat::Jsonl;
    }
    match text.lines().find(|l| !l.trim().is_empty()) {
        Some(l) if l.trim_start().starts_with("Q:") => DataFormat::Qa,
        _ => DataFormat::Text,
    }
}

/// `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}` per non-empty line.
pub fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let msgs = v
            .get("messages")
            .and_then(|m| m.as_array())
            .with_context(|| format!("{}: expected {{\"messages\": [...]}}", at()))?;
        let mut conv = Conversation::default();
        for m in msgs {
            let role = m.get("role").and_then(|r| r.as_str()).unwrap_or("");
            let content = m.get("content").and_then(|c| c.as_str());
            let role = match role {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => bail!(
                    "{}: unknown role {other:?} (system, user or assistant)",
                    at()
                ),
            };
            let Some(content) = content else {
                bail!("{}: a message without a \"content\" string", at())
            };
            conv.turns.push((role, content.to_string()));
        }
        if !conv.turns.iter().any(|(r, _)| *r == Role::Assistant) {
            bail!(
                "{}: a conversation without an assistant message teaches nothing",
                at()
            );
        }
        out.push(conv);
    }
    Ok(out)
}

/// `Q:` starts a user turn, `A:` an assistant turn, other lines continue the current turn, a blank line ends
/// the conversation.
pub fn parse_qa(text: &str) -> Vec<Conversation> {
    let mut out = Vec::new();
    let mut conv = Conversation::default();
    let mut finish = |conv: &mut Conversation| {
        if conv.turns.iter().any(|(r, _)| *r == Role::Assistant) {
            out.push(std::mem::take(conv));
        } else {
            conv.turns.clear();
        }
    };
    for line in text.lines() {
        let l = line.trim_end();
        if l.trim().is_empty() {
            finish(&mut conv);
        } else if let Some(q) = l.trim_start().strip_prefix("Q:") {
            conv.turns.push((Role::User, q.trim().to_string()));
        } else if let Some(a) = l.trim_start().strip_prefix("A:") {
            conv.turns.push((Role::Assistant, a.trim().to_string()));
        } else if let Some((_, t)) = conv.turns.last_mut() {
            t.push('\n');
            t.push_str(l);
        }
    }
    finish(&mut conv);
    out
}

/// Text to token ids, and the specials a tokenizer provides.
pub trait Encode: Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    fn data(&self) -> &TokenizerData;
}

/// A conversation as the model sees it in `enigma chat`, and which targets carry loss: `(tokens, mask)` where
/// `mask[i]` says whether `tokens[i]` (predicted from the tokens before it) counts.
pub fn render(
    tok: &dyn Encode,
    markers: ChatTokens,
    conv: &Conversation,
) -> Result<(Vec<u32>, Vec<bool>)> {
    let d = tok.data();
    let turns = conv.turns.iter().map(|(role, text)| (*role, text.as_str()));
    // The one layout `enigma chat` and the server prompt such a model with (enigma-chat).
    enigma_chat::marker_layout(turns, markers, d.bos, d.eos, usize::MAX, |text, _| {
        tok.encode(text)
    })
}

/// Where one example's tokens are.
#[derive(Clone, Copy, Debug)]
enum Example {
    /// `T + 1` tokens of `stream` from this offset.
    Window(usize),
    /// A rendered conversation.
    Chat(usize),
}

/// A set of examples of one sequence length.
pub struct Split {
    t: usize,
    stream: Vec<u32>,
    chats: Vec<(Vec<u32>, Vec<bool>)>,
    examples: Vec<Example>,
    pad: u32,
}

impl Split {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Tokens in the split (stream and conversations).
    pub fn tokens(&self) -> usize {
        self.stream.len() + self.chats.iter().map(|c| c.0.len()).sum::<usize>()
    }

    /// Appends example `i` to `batch`.
    fn push(&self, i: usize, batch: &mut Batch) {
        let t = self.t;
        match self.examples[i] {
            Example::Window(at) => {
                let w = &self.stream[at..at + t + 1];
                batch.tokens.extend_from_slice(&w[..t]);
                batch.targets.extend_from_slice(&w[1..]);
                batch.mask.extend(std::iter::repeat_n(true, t));
            }
            Example::Chat(c) => {
                let (ids, mask) = &self.chats[c];
                let n = ids.len().min(t + 1);
                for j in 0..t {
                    let (tok, tgt, m) = if j + 1 < n {
                        (ids[j], ids[j + 1], mask[j + 1])
                    } else {
                        (
                            ids.get(j).copied().filter(|_| j < n).unwrap_or(self.pad),
                            self.pad,
                            false,
                        )
                    };
                    batch.tokens.push(tok);
                    batch.targets.push(tgt);
                    batch.mask.push(m);
                }
            }
        }
    }

    /// The batch of examples `ids`.
    pub fn batch(&self, ids: impl ExactSizeIterator<Item = usize>) -> Batch {
        let mut b = Batch {
            b: ids.len(),
            t: self.t,
            ..Batch::default()
        };
        for i in ids {
            self.push(i, &mut b);
        }
        b
    }

    /// Token frequencies of the split's counted targets, for the unigram entropy.
    pub fn unigram_entropy(&self, vocab: usize) -> f64 {
        let mut counts = vec![0u64; vocab];
        for &t in &self.stream {
            counts[t as usize] += 1;
        }
        for (ids, mask) in &self.chats {
            for (&t, &m) in ids.iter().zip(mask) {
                if m {
                    counts[t as usize] += 1;
                }
            }
        }
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n as f64;
                -p * p.ln()
            })
            .sum()
    }
}

/// Training and validation examples.
pub struct Dataset {
    pub train: Split,
    pub val: Split,
}

impl Dataset {
    /// Encodes the corpus and cuts it into examples of `t` targets; the last `val_split` of each text and of the
    /// conversations is held out.
    pub fn build(corpus: &Corpus, tok: &dyn Encode, t: usize, val_split: f64) -> Result<Dataset> {
        if !(0.0..0.5).contains(&val_split) {
            bail!("--val-split must be at least 0 and below 0.5, not {val_split}");
        }
        let d = tok.data();
        let pad = d.pad.unwrap_or(d.eos);
        let mut train = Split {
            t,
            stream: Vec::new(),
            chats: Vec::new(),
            examples: Vec::new(),
            pad,
        };
        let mut val = Split {
            t,
            stream: Vec::new(),
            chats: Vec::new(),
            examples: Vec::new(),
            pad,
        };
        for text in &corpus.texts {
            let mut ids = vec![d.bos];
            ids.extend(tok.encode(text)?);
            let cut = ids.len() - (ids.len() as f64 * val_split) as usize;
            val.stream.extend_from_slice(&ids[cut..]);
            train.stream.extend_from_slice(&ids[..cut]);
        }
        if !corpus.chats.is_empty() {
            let markers = super::bpe::chat_markers(d)?;
            let n_val = (corpus.chats.len() as f64 * val_split) as usize;
            let cut = corpus.chats.len() - n_val;
            for (i, conv) in corpus.chats.iter().enumerate() {
                let r = render(tok, markers, conv)?;
                if i < cut { &mut train } else { &mut val }.chats.push(r);
            }
        }
        for s in [&mut train, &mut val] {
            let windows = if s.stream.len() > t {
                (s.stream.len() - 1) / t
            } else {
                0
            };
            s.examples = (0..windows).map(|i| Example::Window(i * t)).collect();
            s.examples.extend((0..s.chats.len()).map(Example::Chat));
        }
        if train.is_empty() {
            bail!(
                "the data makes no training example of {} tokens ({} tokens in all); use more data or a smaller --seq-len",
                t + 1,
                train.tokens()
            );
        }
        Ok(Dataset { train, val })
    }
}

/// SplitMix64: small, seedable, and the same on every platform.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The order examples are drawn in: a seeded shuffle per epoch; `position` examples have been consumed.
pub struct Order {
    seed: u64,
    n: usize,
    epoch: u64,
    perm: Vec<usize>,
}

impl Order {
    pub fn new(seed: u64, n: usize) -> Order {
        let mut o = Order {
            seed,
            n,
            epoch: u64::MAX,
            perm: Vec::new(),
        };
        o.shuffle(0);
        o
    }

    fn shuffle(&mut self, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        self.epoch = epoch;
        self.perm = (0..self.n).collect();
        let mut rng = Rng(self.seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
        for i in (1..self.n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            self.perm.swap(i, j);
        }
    }

    /// The example at data position `pos`.
    pub fn at(&mut self, pos: u64) -> usize {
        let n = self.n as u64;
        self.shuffle(pos / n);
        self.perm[(pos % n) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qa_pairs_become_conversations() {
        let c = parse_qa(
            "Q: hi\nA: hello\nthere\n\nQ: 2+2?\nA: 4\nQ: and 3+3?\nA: 6\n\nQ: no answer\n",
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].turns[1], (Role::Assistant, "hello\nthere".to_string()));
        assert_eq!(c[1].turns.len(), 4);
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let p = Path::new("chat.jsonl");
        let ok = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
        assert_eq!(parse_jsonl(p, ok).unwrap().len(), 1);
        let err = parse_jsonl(
            p,
            &format!("{ok}\n{{\"messages\": [{{\"role\": \"bot\", \"content\": \"x\"}}]}}"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("chat.jsonl:2") && err.contains("bot"), "{err}");
        assert!(parse_jsonl(p, "not json")
            .unwrap_err()
            .to_string()
            .contains("chat.jsonl:1"));
    }

    /// One id per byte; BOS 1, EOS 2, PAD 0, user 3, assistant 4.
    struct Bytes(TokenizerData);
    impl Encode for Bytes {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.bytes().map(u32::from).collect())
        }
        fn data(&self) -> &TokenizerData {
            &self.0
        }
    }

    #[test]
    fn conversations_render_as_chat_feeds_them_with_loss_on_replies_only() {
        let tok = Bytes(TokenizerData {
            pieces: vec![],
            scores: vec![],
            bos: 1,
            eos: 2,
            pad: Some(0),
            add_dummy_prefix: false,
            chat: Some(ChatTokens {
                user: 3,
                assistant: 4,
            }),
            split: enigma_core::pretok::Split::None,
            added: Vec::new(),
        });
        let conv = Conversation {
            turns: vec![
                (Role::System, "s".into()),
                (Role::User, "hi".into()),
                (Role::Assistant, "yo".into()),
                (Role::User, "q".into()),
                (Role::Assistant, "a".into()),
            ],
        };
        let markers = ChatTokens {
            user: 3,
            assistant: 4,
        };
        let (ids, mask) = render(&tok, markers, &conv).unwrap();
        let (h, i, y, o, q, a, s) = (104, 105, 121, 111, 113, 97, 115);
        assert_eq!(ids, [1, s, 3, h, i, 4, y, o, 2, 3, q, 4, a, 2]);
        let counted: Vec<u32> = ids
            .iter()
            .zip(&mask)
            .filter(|p| *p.1)
            .map(|p| *p.0)
            .collect();
        assert_eq!(counted, [y, o, 2, a, 2]);
        // As a batch row of T = 16: inputs padded with PAD, padded targets never count.
        let split = Split {
            t: 16,
            stream: vec![],
            chats: vec![(ids, mask)],
            examples: vec![Example::Chat(0)],
            pad: 0,
        };
        let b = split.batch(0..1);
        assert_eq!(b.count(), 5);
        assert_eq!(&b.tokens[13..], [2, 0, 0]);
        assert!(!b.mask[13..].iter().any(|m| *m));
    }

    #[test]
    fn the_order_is_a_permutation_per_epoch_and_repeatable() {
        let mut o = Order::new(5, 10);
        let first: Vec<usize> = (0..10).map(|p| o.at(p)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        let second: Vec<usize> = (10..20).map(|p| o.at(p)).collect();
        assert_ne!(first, second);
        let mut again = Order::new(5, 10);
        assert_eq!(again.at(13), second[3]);
    }
}
