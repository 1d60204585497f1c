//! The tokenizer a training run encodes with: one we trained ([`Bpe`], encoded word by word), or the one of
//! a model being fine-tuned (any `.enigma` tokenizer, encoded by the runtime's exact O(n log n) encoder).

use super::bpe::Bpe;
use super::data::Encode;
use anyhow::Result;
use enigma_core::format::{ChatTokens, TOK_PREFIX_IF_UNSPACED};
use enigma_core::Tokenizer;
use enigma_runtime::{Extra, TokenizerData};

pub struct Vocab {
    data: TokenizerData,
    bpe: Option<Bpe>,
    /// The core's arrays for a foreign tokenizer: all pieces, `(V + 1)` offsets, `(V)` ids in byte order.
    pieces: Vec<u8>,
    offsets: Vec<u32>,
    sorted: Vec<u32>,
    /// The model's `tokenizer.prefix_if_unspaced` flag, so training text encodes as inference does.
    prefix_if_unspaced: bool,
}

impl Vocab {
    pub fn from_bpe(bpe: Bpe) -> Vocab {
        Vocab {
            data: bpe.data(),
            bpe: Some(bpe),
            pieces: Vec::new(),
            offsets: Vec::new(),
            sorted: Vec::new(),
            prefix_if_unspaced: false,
        }
    }

    /// Any tokenizer (with the tensors its model keeps beside it, which may hold its flags); ours is
    /// recognised and gets the fast encoder. Whether it advertises chat markers is the given data's say
    /// (see [`Vocab::set_chat`]).
    pub fn from_data(data: TokenizerData, extras: &[Extra]) -> Result<Vocab> {
        data.check_limits()?;
        if let Some(bpe) = Bpe::from_data(&data) {
            let mut v = Vocab::from_bpe(bpe);
            v.data.chat = data.chat;
            return Ok(v);
        }
        let mut pieces = Vec::new();
        let mut offsets = vec![0u32];
        for p in &data.pieces {
            pieces.extend_from_slice(p);
            offsets.push(pieces.len() as u32);
        }
        let mut sorted: Vec<u32> = (0..data.pieces.len() as u32).collect();
        sorted.sort_by(|&a, &b| data.pieces[a as usize].cmp(&data.pieces[b as usize]));
        let v = Vocab {
            data,
            bpe: None,
            pieces,
            offsets,
            sorted,
            prefix_if_unspaced: extras
                .iter()
                .any(|e| e.name == TOK_PREFIX_IF_UNSPACED && e.bytes == [1]),
        };
        v.core()?;
        Ok(v)
    }

    /// The core's tokenizer, with the model's split, added tokens and prefix rule: the one inference uses.
    fn core(&self) -> Result<Tokenizer<'_>> {
        Ok(Tokenizer::new(
            self.data.meta(),
            &self.pieces,
            &self.offsets,
            &self.data.scores,
            &self.sorted,
        )?
        .with_split(self.data.split)
        .with_added(&self.data.added)?
        .with_prefix_if_unspaced(self.prefix_if_unspaced))
    }

    /// Whether the model file says "this model knows the chat markers". Our tokenizer always reserves
    /// them; a model only advertises them once it has been trained on conversations, so that `enigma chat`
    /// treats a model trained on plain text as the completion model it is.
    pub fn set_chat(&mut self, chat: Option<ChatTokens>) {
        self.data.chat = chat;
    }

    pub fn bpe(&self) -> Option<&Bpe> {
        self.bpe.as_ref()
    }

    pub fn vocab_size(&self) -> usize {
        self.data.pieces.len()
    }
}

impl Encode for Vocab {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.bpe {
            Some(b) => Ok(b.encode(text)),
            None => Ok(enigma_runtime::tokenize::encode(
                &self.core()?,
                text,
                false,
                false,
            )?),
        }
    }

    fn data(&self) -> &TokenizerData {
        &self.data
    }
}
