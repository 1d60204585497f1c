//! Writing a `.enigma` model as GGUF v3 with llama-architecture keys, so llama.cpp and Ollama load it
//! (`enigma export gguf`). Tensors keep their dtype (f32, f16, bf16, q8_0 and q4_0 are GGML's own block
//! layouts); stacked `(L, ...)` tensors become `blk.N.*` tensors.
//!
//! The vocabulary goes out as `llama` (SentencePiece: pieces with `▁`, scores, token types) when it
//! encodes like one (a dummy prefix or `<0xNN>` byte fallback: llama2.c's vocabularies), else as `gpt2`
//! (byte-level BPE: pieces in GPT-2's byte alphabet, and merges rebuilt from the scores: our trained BPE).

use super::import::{gguf_name, is_stacked};
use super::read::{GgmlType, ValueType, DEFAULT_ALIGNMENT, MAGIC};
use super::{token_type, KEEP_TEMPLATE};
use crate::bpe::{byte_chars, SPM_SPACE};
use anyhow::{ensure, Context, Result};
use enigma_core::config::ParamLayout;
use enigma_core::kernels::DType;
use enigma_core::pretok::Split;
use enigma_core::{EnigmaFile, Tokenizer};

/// Scores at or below this never merge in the core's encoder: those tokens are control tokens.
const MERGE_FLOOR: f32 = -1e10;

#[derive(Default)]
struct Out {
    b: Vec<u8>,
    n_kv: u64,
}

impl Out {
    fn str(&mut self, s: &[u8]) {
        self.b.extend((s.len() as u64).to_le_bytes());
        self.b.extend_from_slice(s);
    }
    fn key(&mut self, k: &str, ty: ValueType) {
        self.n_kv += 1;
        self.str(k.as_bytes());
        self.b.extend((ty as u32).to_le_bytes());
    }
    fn kv_str(&mut self, k: &str, v: &str) {
        self.key(k, ValueType::Str);
        self.str(v.as_bytes());
    }
    fn kv_u32(&mut self, k: &str, v: u32) {
        self.key(k, ValueType::U32);
        self.b.extend(v.to_le_bytes());
    }
    fn kv_f32(&mut self, k: &str, v: f32) {
        self.key(k, ValueType::F32);
        self.b.extend(v.to_le_bytes());
    }
    fn kv_bool(&mut self, k: &str, v: bool) {
        self.key(k, ValueType::Bool);
        self.b.push(u8::from(v));
    }
    fn array_head(&mut self, k: &str, elem: ValueType, n: usize) {
        self.key(k, ValueType::Array);
        self.b.extend((elem as u32).to_le_bytes());
        self.b.extend((n as u64).to_le_bytes());
    }
    fn kv_strs(&mut self, k: &str, v: &[Vec<u8>]) {
        self.array_head(k, ValueType::Str, v.len());
        for s in v {
            self.str(s);
        }
    }
    fn kv_f32s(&mut self, k: &str, v: &[f32]) {
        self.array_head(k, ValueType::F32, v.len());
        v.iter().for_each(|x| self.b.extend(x.to_le_bytes()));
    }
    fn kv_i32s(&mut self, k: &str, v: &[i32]) {
        self.array_head(k, ValueType::I32, v.len());
        v.iter().for_each(|x| self.b.extend(x.to_le_bytes()));
    }
}

fn ggml_type(d: DType) -> Option<GgmlType> {
    Some(match d {
        DType::F32 => GgmlType::F32,
        DType::F16 => GgmlType::F16,
        DType::BF16 => GgmlType::BF16,
        DType::Q8_0 => GgmlType::Q8_0,
        DType::Q4_0 => GgmlType::Q4_0,
        DType::Q4K => GgmlType::K(enigma_core::kernels::kquants::KQuant::Q4K),
        DType::Q6K => GgmlType::K(enigma_core::kernels::kquants::KQuant::Q6K),
        DType::U8 | DType::U32 => return None,
    })
}

fn is_control(tok: &Tokenizer<'_>, i: u32) -> bool {
    let m = tok.meta();
    i == m.bos || i == m.eos || Some(i) == m.pad || tok.score(i) <= MERGE_FLOOR
}

/// The tokenizer keys of a SentencePiece-style vocabulary.
fn llama_vocab(out: &mut Out, tok: &Tokenizer<'_>) -> Result<()> {
    let v = tok.vocab_size() as u32;
    let mut pieces = Vec::new();
    let mut scores = Vec::new();
    let mut types = Vec::new();
    for i in 0..v {
        let p = tok.piece(i);
        let text = std::str::from_utf8(p).ok().with_context(|| {
            format!("token {i} is not UTF-8, which a SentencePiece vocabulary needs")
        })?;
        let control = is_control(tok, i);
        let (text, ty) = if control {
            // llama2.c spells BOS and EOS "\n<s>\n" and "\n</s>\n"; GGUF vocabularies write "<s>".
            (text.trim().to_string(), token_type::CONTROL)
        } else if text == "<unk>" {
            (text.to_string(), token_type::UNKNOWN)
        } else if is_byte_piece(p) {
            (text.to_string(), token_type::BYTE)
        } else {
            (text.replace(' ', SPM_SPACE), token_type::NORMAL)
        };
        pieces.push(text.into_bytes());
        scores.push(if control { 0.0 } else { tok.score(i) });
        types.push(ty);
    }
    out.kv_str("tokenizer.ggml.model", "llama");
    out.kv_strs("tokenizer.ggml.tokens", &pieces);
    out.kv_f32s("tokenizer.ggml.scores", &scores);
    out.kv_i32s("tokenizer.ggml.token_type", &types);
    if let Some(unk) = (0..v).find(|&i| tok.piece(i) == b"<unk>") {
        out.kv_u32("tokenizer.ggml.unknown_token_id", unk);
    }
    out.kv_bool(
        "tokenizer.ggml.add_space_prefix",
        tok.meta().add_dummy_prefix,
    );
    Ok(())
}

fn is_byte_piece(p: &[u8]) -> bool {
    p.len() == 6 && p.starts_with(b"<0x") && p[5] == b'>'
}

/// The pair the core's encoder joins last when it encodes `piece` on its own: the merge that makes the piece
/// in a BPE that applies merges in rank order, as llama.cpp's does (any other split of the piece into two
/// pieces could be one BPE never reaches, leaving the text in other tokens).
fn last_merge(tok: &Tokenizer<'_>, piece: &[u8]) -> Option<(u32, u32)> {
    let mut ids: Vec<u32> = Vec::new();
    match std::str::from_utf8(piece) {
        Ok(text) => {
            ids.resize(Tokenizer::max_tokens(text.len()), 0);
            let n = tok.pre_tokenize(text, false, &mut ids).ok()?;
            ids.truncate(n);
        }
        Err(_) => {
            for b in piece {
                ids.push(tok.lookup(std::slice::from_ref(b))?);
            }
        }
    }
    let mut last = None;
    while ids.len() > 1 {
        let best = (0..ids.len() - 1)
            .filter_map(|i| tok.merge_pair(ids[i], ids[i + 1]).map(|(id, s)| (s, id, i)))
            .fold(None::<(f32, u32, usize)>, |b, c| match b {
                Some(b) if b.0 >= c.0 => Some(b),
                _ => Some(c),
            })?;
        last = Some((ids[best.2], ids[best.2 + 1]));
        ids[best.2] = best.1;
        ids.remove(best.2 + 1);
    }
    last.filter(|_| tok.piece(ids[0]) == piece)
}

/// The tokenizer keys of a byte-level BPE vocabulary, with merges in score (rank) order.
fn gpt2_vocab(out: &mut Out, tok: &Tokenizer<'_>) -> Result<()> {
    let chars = byte_chars();
    let v = tok.vocab_size() as u32;
    let spell = |p: &[u8]| -> String { p.iter().map(|b| chars[*b as usize]).collect() };
    let mut pieces = Vec::new();
    let mut types = Vec::new();
    for i in 0..v {
        let p = tok.piece(i);
        if is_control(tok, i) {
            pieces.push(p.to_vec());
            types.push(token_type::CONTROL);
        } else {
            pieces.push(spell(p).into_bytes());
            types.push(token_type::NORMAL);
        }
    }
    let mut merged: Vec<(f32, u32, Vec<u8>)> = Vec::new();
    for i in 0..v {
        let p = tok.piece(i);
        if p.len() < 2 || is_control(tok, i) {
            continue;
        }
        if let Some((a, b)) = last_merge(tok, p).filter(|_| tok.score(i) > MERGE_FLOOR) {
            let line = format!("{} {}", spell(tok.piece(a)), spell(tok.piece(b)));
            merged.push((tok.score(i), i, line.into_bytes()));
        }
    }
    merged.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges: Vec<Vec<u8>> = merged.into_iter().map(|(_, _, l)| l).collect();
    out.kv_str("tokenizer.ggml.model", "gpt2");
    let pre = match tok.split() {
        Split::None => "default",
        Split::Gpt2 => "gpt-2",
        Split::Llama3 => "llama-bpe",
    };
    out.kv_str("tokenizer.ggml.pre", pre);
    out.kv_strs("tokenizer.ggml.tokens", &pieces);
    out.kv_i32s("tokenizer.ggml.token_type", &types);
    out.kv_strs("tokenizer.ggml.merges", &merges);
    Ok(())
}

/// The model as GGUF v3 bytes.
pub fn to_gguf(file: &EnigmaFile<'_>, name: &str) -> Result<Vec<u8>> {
    let c = *file.config();
    let tok = Tokenizer::from_file(file)?;
    let mut kv = Out::default();
    kv.kv_str("general.architecture", "llama");
    kv.kv_str("general.name", name);
    kv.kv_u32("general.alignment", DEFAULT_ALIGNMENT as u32);
    kv.kv_u32("llama.context_length", c.seq_len);
    kv.kv_u32("llama.embedding_length", c.dim);
    kv.kv_u32("llama.block_count", c.n_layers);
    kv.kv_u32("llama.feed_forward_length", c.hidden_dim);
    kv.kv_u32("llama.attention.head_count", c.n_heads);
    kv.kv_u32("llama.attention.head_count_kv", c.n_kv_heads);
    kv.kv_u32("llama.rope.dimension_count", c.head_size() as u32);
    kv.kv_u32("llama.vocab_size", c.vocab_size);
    kv.kv_f32("llama.rope.freq_base", c.rope_theta);
    kv.kv_f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
    let m = *tok.meta();
    if m.add_dummy_prefix || m.byte_fallback.is_some() {
        llama_vocab(&mut kv, &tok)?;
    } else {
        gpt2_vocab(&mut kv, &tok)?;
    }
    kv.kv_u32("tokenizer.ggml.bos_token_id", m.bos);
    kv.kv_u32("tokenizer.ggml.eos_token_id", m.eos);
    if let Some(pad) = m.pad {
        kv.kv_u32("tokenizer.ggml.padding_token_id", pad);
    }
    kv.kv_bool("tokenizer.ggml.add_bos_token", tok.adds_bos());
    kv.kv_bool("tokenizer.ggml.add_eos_token", false);
    if let Some(t) = file.tensor(KEEP_TEMPLATE) {
        kv.kv_str("tokenizer.chat_template", &String::from_utf8_lossy(t.bytes));
    }

    // Tensor table and data: (name, GGML dims, type, bytes).
    let mut tensors: Vec<(String, Vec<u64>, GgmlType, &[u8])> = Vec::new();
    for spec in ParamLayout::new(&c).iter() {
        let t = file
            .tensor(spec.name)
            .with_context(|| format!("the model has no tensor '{}'", spec.name))?;
        let ty = ggml_type(t.dtype)
            .with_context(|| format!("tensor '{}' is {}", spec.name, t.dtype.name()))?;
        let shape = &spec.shape[..spec.ndim()];
        if is_stacked(&spec) {
            let per = t.bytes.len() / c.n_layers as usize;
            ensure!(
                per > 0 && per * c.n_layers as usize == t.bytes.len(),
                "tensor '{}' does not split into layers",
                spec.name
            );
            for (l, bytes) in t.bytes.chunks_exact(per).enumerate() {
                let name = gguf_name(spec.name, l as u32).unwrap_or_default();
                tensors.push((name, shape[1..].iter().rev().copied().collect(), ty, bytes));
            }
        } else {
            let name = gguf_name(spec.name, 0).unwrap_or_default();
            tensors.push((name, shape.iter().rev().copied().collect(), ty, t.bytes));
        }
    }

    let align = |x: u64| x.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(kv.n_kv.to_le_bytes());
    out.extend_from_slice(&kv.b);
    let mut offset = 0u64;
    for (name, dims, ty, bytes) in &tensors {
        let mut o = Out::default();
        o.str(name.as_bytes());
        out.extend_from_slice(&o.b);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = align(offset + bytes.len() as u64);
    }
    let data_start = align(out.len() as u64) as usize;
    out.resize(data_start, 0);
    for (_, _, _, bytes) in &tensors {
        out.extend_from_slice(bytes);
        let end = data_start + align((out.len() - data_start) as u64) as usize;
        out.resize(end, 0);
    }
    Ok(out)
}
