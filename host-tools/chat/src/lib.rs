//! A conversation as the token ids a model is prompted with.
//!
//! One builder for every caller (`enigma chat`, the `inference` and `gguf_loader` modules behind the
//! server and `enigma modules generate`, `enigma train`'s chat data), so a conversation is the same tokens
//! wherever it is rendered. The layout is the first of these the model has:
//!
//! 1. its own Jinja chat template (kept from a GGUF file's `tokenizer.chat_template` or a Hugging Face
//!    `tokenizer_config.json`), rendered as `apply_chat_template` renders it ([`template`]); the special
//!    pieces in the text (`<|im_start|>`, `<s>`) become their single ids, the text between them is encoded
//!    as any prompt is, and BOS leads (once);
//! 2. the chat markers of a model `enigma train` trained on conversations ([`marker_layout`]);
//! 3. plain lines for a completion model: BOS, then each message's text and a newline.

pub mod template;

use enigma_core::format::ChatTokens;
use enigma_core::{EnigmaFile, Tokenizer};
use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The model's template does not parse or fails on its own: the model file's fault.
    #[error("the model's chat template {0}")]
    Template(String),
    /// The template's `raise_exception` refused the conversation (a role out of order): the caller's.
    #[error("the model's chat template refuses this conversation: {0}")]
    Refused(String),
    /// The text cannot be encoded within the room given (too long, a character the vocabulary lacks).
    #[error("{0}")]
    Tokens(String),
}

/// Scores at or below this never merge in the core's encoder: a piece scored so is reached only by its id.
const NEVER_MERGED: f32 = -1e10;

/// The end-of-turn pieces of the common chat families. Generating one ends a reply as EOS does, so a
/// template's turn end (`<|im_end|>` where EOS is `<|endoftext|>`) never reaches the text.
const END_OF_TURN: [&str; 8] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
];

enum Layout {
    Template(String),
    Markers(ChatTokens),
    Plain,
}

/// How one model is prompted with a conversation, and which tokens end its reply.
pub struct ChatFormat {
    layout: Layout,
    bos: u32,
    /// Whether the vocabulary puts BOS first (`Tokenizer::adds_bos`); a rendered template without it gets it.
    adds_bos: bool,
    eos: u32,
    bos_text: String,
    eos_text: String,
    /// Control pieces and their ids, longest first (so `<|im_start|>` wins over a shorter piece at the
    /// same place).
    specials: Vec<(Vec<u8>, u32)>,
    end_of_turn: Vec<u32>,
}

/// A control piece of the vocabulary: one the encoder never makes from text (its score is below the merge
/// floor: a GGUF file's control and unknown tokens are imported so) and that is written as a marker in
/// angle or square brackets.
fn is_special(tok: &Tokenizer<'_>, id: u32) -> bool {
    let p = tok.piece(id);
    tok.score(id) <= NEVER_MERGED
        && p.len() >= 3
        && matches!(p.first(), Some(b'<' | b'['))
        && matches!(p.last(), Some(b'>' | b']'))
}

impl ChatFormat {
    /// The format of the model in `file` (its tokenizer is `tok`).
    pub fn of(file: &EnigmaFile<'_>, tok: &Tokenizer<'_>) -> Result<Self, ChatError> {
        let template = enigma_models::gguf::chat_template(file)
            .map_err(|e| ChatError::Template(format!("cannot be read: {e:#}")))?;
        Ok(Self::new(tok, template))
    }

    /// The format for `tok` with `template` (a Jinja chat template) if given.
    pub fn new(tok: &Tokenizer<'_>, template: Option<&str>) -> Self {
        let specials = if template.is_some() {
            let mut s: Vec<(Vec<u8>, u32)> = (0..tok.vocab_size() as u32)
                .filter(|&id| is_special(tok, id))
                .map(|id| (tok.piece(id).to_vec(), id))
                .collect();
            s.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
            s
        } else {
            Vec::new()
        };
        let mut end_of_turn: Vec<u32> = specials
            .iter()
            .filter(|(p, _)| END_OF_TURN.iter().any(|e| e.as_bytes() == p.as_slice()))
            .map(|&(_, id)| id)
            .collect();
        end_of_turn.sort_unstable();
        let layout = match (template, tok.meta().chat) {
            (Some(t), _) => Layout::Template(t.to_string()),
            (None, Some(m)) => Layout::Markers(m),
            (None, None) => Layout::Plain,
        };
        let text = |id| String::from_utf8_lossy(tok.piece(id)).into_owned();
        ChatFormat {
            layout,
            bos: tok.bos(),
            adds_bos: tok.adds_bos(),
            eos: tok.eos(),
            bos_text: text(tok.bos()),
            eos_text: text(tok.eos()),
            specials,
            end_of_turn,
        }
    }

    /// Whether the model was made for conversations (a template or markers), not a completion model.
    pub fn is_chat(&self) -> bool {
        !matches!(self.layout, Layout::Plain)
    }

    /// The model's Jinja template, when it has one.
    pub fn template(&self) -> Option<&str> {
        match &self.layout {
            Layout::Template(t) => Some(t),
            _ => None,
        }
    }

    /// Which layout this is, in a few words (`enigma chat`'s first line, Ollama's `/api/show`).
    pub fn describe(&self) -> &'static str {
        match self.layout {
            Layout::Template(_) => "the model's own chat template",
            Layout::Markers(_) => "the model's own chat markers",
            Layout::Plain => "plain lines (docs/SERVE.md)",
        }
    }

    /// Whether generating `id` ends the reply: EOS, or an end-of-turn control token of the vocabulary.
    pub fn ends_reply(&self, id: u32) -> bool {
        id == self.eos || self.end_of_turn.binary_search(&id).is_ok()
    }

    /// The ids the model is prompted with for `messages`, ending where the assistant's reply begins; more
    /// than `max` is an error.
    pub fn prompt(
        &self,
        tok: &Tokenizer<'_>,
        messages: &[ChatMessage],
        max: usize,
    ) -> Result<Vec<u32>, ChatError> {
        let ids = match &self.layout {
            Layout::Template(source) => {
                let text =
                    template::render(source, messages, &self.bos_text, &self.eos_text, true)?;
                self.encode_with_specials(tok, &text, max)?
            }
            Layout::Markers(markers) => {
                let turns = messages.iter().map(|m| (m.role, m.content.as_str()));
                let (mut ids, _) =
                    marker_layout(turns, *markers, self.bos, self.eos, max, |t, left| {
                        encode(tok, t, false, max, max - left)
                    })?;
                ids.push(markers.assistant);
                ids
            }
            Layout::Plain => {
                let text: String = messages
                    .iter()
                    .map(|m| format!("{}\n", m.content))
                    .collect();
                encode(tok, &text, true, max, 0)?
            }
        };
        if ids.len() > max {
            return Err(ChatError::Tokens(
                enigma_core::Error::PromptTooLong {
                    tokens: ids.len(),
                    max,
                }
                .to_string(),
            ));
        }
        Ok(ids)
    }

    /// The longest special piece at the start of `text`.
    fn special_at(&self, text: &[u8]) -> Option<(usize, u32)> {
        self.specials
            .iter()
            .find(|(p, _)| text.starts_with(p))
            .map(|(p, id)| (p.len(), *id))
    }

    /// `text` as ids: each special piece its own id, the text between encoded as a prompt (so SentencePiece's
    /// dummy space starts each stretch after a special, as in llama.cpp), BOS first unless the text began
    /// with it.
    fn encode_with_specials(
        &self,
        tok: &Tokenizer<'_>,
        text: &str,
        max: usize,
    ) -> Result<Vec<u32>, ChatError> {
        let bytes = text.as_bytes();
        let mut ids = Vec::new();
        let mut start = 0;
        let mut i = 0;
        let flush = |ids: &mut Vec<u32>, from: usize, to: usize| -> Result<(), ChatError> {
            // Special pieces begin with an ASCII bracket, so `from` and `to` are character boundaries.
            if let Some(stretch) = text.get(from..to).filter(|s| !s.is_empty()) {
                // BOS, when it is added, comes on top of what was counted here; the total is checked after.
                ids.extend(encode(tok, stretch, false, max, ids.len())?);
            }
            Ok(())
        };
        while i < bytes.len() {
            // Every special piece opens with a bracket, so other bytes need no search.
            if !matches!(bytes[i], b'<' | b'[') {
                i += 1;
                continue;
            }
            match self.special_at(&bytes[i..]) {
                Some((len, id)) => {
                    flush(&mut ids, start, i)?;
                    ids.push(id);
                    i += len;
                    start = i;
                }
                None => i += 1,
            }
        }
        flush(&mut ids, start, bytes.len())?;
        if self.adds_bos && ids.first() != Some(&self.bos) {
            ids.insert(0, self.bos);
        }
        Ok(ids)
    }
}

/// `text` encoded within what is left of `max` after the `used` tokens before it. A text too long says how
/// long the whole conversation is at least, not the part.
fn encode(
    tok: &Tokenizer<'_>,
    text: &str,
    bos: bool,
    max: usize,
    used: usize,
) -> Result<Vec<u32>, ChatError> {
    use enigma_core::Error::{PromptBytesTooLong, PromptTooLong};
    enigma_runtime::tokenize::encode_within(tok, text, bos, false, max.saturating_sub(used))
        .map_err(|e| match e {
            // Refused from its length in bytes, before the work of encoding it.
            enigma_runtime::Error::Core(PromptBytesTooLong { bytes, tokens, .. }) => {
                ChatError::Tokens(format!(
                    "the conversation is at least {} tokens (a text of {bytes} bytes) but the model's context holds {max}",
                    used + tokens
                ))
            }
            enigma_runtime::Error::Core(PromptTooLong { tokens, .. }) => ChatError::Tokens(format!(
                "the conversation is at least {} tokens but the model's context holds {max}",
                used + tokens
            )),
            e => ChatError::Tokens(e.to_string()),
        })
}

/// The chat-marker layout `enigma train` learns from and `enigma chat` prompts with: BOS; a system turn as
/// its text; a user turn as the user marker and its text; an assistant turn as the assistant marker, its
/// text and EOS. Also returns which targets a trainer puts loss on (`mask[i]`: whether `ids[i]`, predicted
/// from the ids before it, counts): the assistant's text and its EOS. `encode(text, left)` encodes a turn
/// within the `left` tokens still free of `max`.
pub fn marker_layout<'t, E>(
    turns: impl IntoIterator<Item = (Role, &'t str)>,
    markers: ChatTokens,
    bos: u32,
    eos: u32,
    max: usize,
    mut encode: impl FnMut(&str, usize) -> Result<Vec<u32>, E>,
) -> Result<(Vec<u32>, Vec<bool>), E> {
    let mut ids = vec![bos];
    let mut mask = vec![false];
    for (role, text) in turns {
        let enc = encode(text, max.saturating_sub(ids.len()))?;
        match role {
            Role::System => {
                mask.extend(std::iter::repeat_n(false, enc.len()));
                ids.extend(enc);
            }
            Role::User => {
                ids.push(markers.user);
                mask.extend(std::iter::repeat_n(false, enc.len() + 1));
                ids.extend(enc);
            }
            Role::Assistant => {
                ids.push(markers.assistant);
                mask.push(false);
                mask.extend(std::iter::repeat_n(true, enc.len() + 1));
                ids.extend(enc);
                ids.push(eos);
            }
        }
    }
    Ok((ids, mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use enigma_core::format::TokenizerMeta;

    /// A vocabulary of the letters, space and newline (score 0) and four control pieces (scored as a GGUF
    /// import scores them), as the arrays a `.enigma` file holds.
    struct Vocab {
        pieces: Vec<u8>,
        offsets: Vec<u32>,
        scores: Vec<f32>,
        sorted: Vec<u32>,
    }

    const CONTROL: [&str; 4] = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"];

    fn vocab() -> Vocab {
        let mut list: Vec<(String, f32)> = CONTROL.iter().map(|c| (c.to_string(), -1e30)).collect();
        list.extend(('a'..='z').chain([' ', '\n']).map(|c| (c.to_string(), 0.0)));
        let mut v = Vocab {
            pieces: Vec::new(),
            offsets: vec![0],
            scores: Vec::new(),
            sorted: (0..list.len() as u32).collect(),
        };
        for (p, s) in &list {
            v.pieces.extend_from_slice(p.as_bytes());
            v.offsets.push(v.pieces.len() as u32);
            v.scores.push(*s);
        }
        v.sorted
            .sort_by_key(|&i| list[i as usize].0.as_bytes().to_vec());
        v
    }

    fn tokenizer(v: &Vocab) -> Tokenizer<'_> {
        let meta = TokenizerMeta {
            bos: 0,
            eos: 1,
            pad: None,
            max_token_len: 12,
            add_dummy_prefix: false,
            byte_fallback: None,
            chat: None,
        };
        Tokenizer::new(meta, &v.pieces, &v.offsets, &v.scores, &v.sorted).unwrap()
    }

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn letters(tok: &Tokenizer<'_>, s: &str) -> Vec<u32> {
        s.bytes().map(|b| tok.lookup(&[b]).unwrap()).collect()
    }

    #[test]
    fn control_pieces_in_the_rendered_text_are_single_ids_and_bos_leads_once() {
        let v = vocab();
        let tok = tokenizer(&v);
        let f = ChatFormat::new(&tok, Some(CHATML));
        assert!(f.is_chat());
        let ids = f.prompt(&tok, &[ChatMessage::user("hi")], 100).unwrap();
        let (start, end) = (2, 3);
        let mut want = vec![tok.bos(), start];
        want.extend(letters(&tok, "user\nhi"));
        want.extend([end]);
        want.extend(letters(&tok, "\n"));
        want.push(start);
        want.extend(letters(&tok, "assistant\n"));
        assert_eq!(ids, want);
        // A template that writes BOS itself gets no second one.
        let with_bos = format!("{{{{ bos_token }}}}{CHATML}");
        let f = ChatFormat::new(&tok, Some(&with_bos));
        assert_eq!(
            f.prompt(&tok, &[ChatMessage::user("hi")], 100).unwrap(),
            want
        );
        // Too long for the room given is an error, not a cut prompt.
        assert!(matches!(
            f.prompt(&tok, &[ChatMessage::user("hi")], want.len() - 1),
            Err(ChatError::Tokens(_))
        ));
    }

    #[test]
    fn eos_and_end_of_turn_pieces_end_a_reply() {
        let v = vocab();
        let tok = tokenizer(&v);
        let f = ChatFormat::new(&tok, Some(CHATML));
        assert!(f.ends_reply(1) && f.ends_reply(3));
        assert!(!f.ends_reply(0) && !f.ends_reply(2) && !f.ends_reply(5));
        // Without a template the control pieces are not looked for: EOS alone ends a reply.
        let plain = ChatFormat::new(&tok, None);
        assert!(plain.ends_reply(1) && !plain.ends_reply(3));
        assert!(!plain.is_chat());
    }

    #[test]
    fn plain_lines_and_markers_lay_out_as_documented() {
        let v = vocab();
        let tok = tokenizer(&v);
        let conv = [
            ChatMessage::system("be"),
            ChatMessage::user("hi"),
            ChatMessage::assistant("yo"),
            ChatMessage::user("ok"),
        ];
        let plain = ChatFormat::new(&tok, None);
        let mut want = vec![tok.bos()];
        want.extend(letters(&tok, "be\nhi\nyo\nok\n"));
        assert_eq!(plain.prompt(&tok, &conv, 100).unwrap(), want);

        let markers = ChatTokens {
            user: 2,
            assistant: 3,
        };
        let (ids, mask) = marker_layout(
            conv.iter().map(|m| (m.role, m.content.as_str())),
            markers,
            0,
            1,
            100,
            |t, _| Ok::<_, ()>(letters(&tok, t)),
        )
        .unwrap();
        let l = |s| letters(&tok, s);
        let want: Vec<u32> = [
            vec![0],
            l("be"),
            vec![2],
            l("hi"),
            vec![3],
            l("yo"),
            vec![1],
            vec![2],
            l("ok"),
        ]
        .concat();
        assert_eq!(ids, want);
        // Loss on the assistant's text and its EOS only.
        let on: Vec<usize> = (0..mask.len()).filter(|&i| mask[i]).collect();
        assert_eq!(on, [7, 8, 9]);
    }
}
