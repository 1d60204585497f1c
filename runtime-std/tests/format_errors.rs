//! Every way a `.enigma` file can be wrong gets its own error variant, never a panic; and docs/FORMAT.md
//! describes the bytes exactly (checked here by a hand-written decoder and encoder that follow the document,
//! not postcard).

use enigma_core::config::{self, Config, ParamLayout};
use enigma_core::format::{
    Header, ALIGN, MAGIC, MAX_DIMS, MAX_TENSORS, PRELUDE_LEN, TOK_OFFSETS, TOK_PIECES, TOK_SCORES,
    TOK_SORTED, VERSION,
};
use enigma_core::kernels::{kernels, DType};
use enigma_core::{EnigmaFile, Error, Tokenizer, Transformer};
use enigma_runtime::{AlignedBytes, ModelFile, ModelWriter, TokenizerData};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------------------
// A small valid model.

fn tiny_config() -> Config {
    Config {
        dim: 16,
        hidden_dim: 32,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: 10,
        seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    }
}

fn tiny_tokenizer() -> TokenizerData {
    let pieces: [&[u8]; 10] = [
        b"<unk>", b"<s>", b"</s>", b" ", b"a", b"b", b"ab", b" ab", b"\n", b"ba",
    ];
    TokenizerData {
        pieces: pieces.iter().map(|p| p.to_vec()).collect(),
        scores: vec![0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.25, -3.0, -0.75],
        bos: 1,
        eos: 2,
        pad: Some(0),
        add_dummy_prefix: true,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    }
}

/// Deterministic weights in [-0.5, 0.5), so failures reproduce.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    enigma_testkit::XorShift::new(seed).fill(n, -0.5, 0.5)
}

fn build(config: Config) -> Vec<u8> {
    let n = ParamLayout::new(&config).total_numel() as usize;
    let mut w = ModelWriter::new(config, tiny_tokenizer());
    w.provenance("test:format_errors", "random weights");
    w.f32_params(&weights(n, 42)).unwrap();
    w.to_bytes().unwrap()
}

fn valid() -> &'static [u8] {
    static V: OnceLock<Vec<u8>> = OnceLock::new();
    V.get_or_init(|| build(tiny_config()))
}

fn nm(s: &str) -> enigma_core::Name {
    s.try_into().unwrap()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn header_len(b: &[u8]) -> usize {
    u32_at(b, 8) as usize
}

/// Parses `bytes` from 64-byte-aligned memory and runs every check a loader runs, returning the first error.
fn load(bytes: &[u8]) -> Result<(), Error> {
    let mem = AlignedBytes::copy_from(bytes);
    let f = EnigmaFile::parse(&mem)?;
    f.verify_checksum()?;
    Transformer::from_file(&f, kernels())?;
    Tokenizer::from_file(&f)?;
    Ok(())
}

/// Only the structural parse.
fn parse_err(bytes: &[u8]) -> Error {
    let mem = AlignedBytes::copy_from(bytes);
    EnigmaFile::parse(&mem).map(|_| ()).unwrap_err()
}

/// The core error inside `ModelFile::from_bytes`'s error.
fn model_file_err(bytes: &[u8]) -> Error {
    match ModelFile::from_bytes(bytes, "test.enigma") {
        Ok(_) => panic!("ModelFile::from_bytes accepted a bad file"),
        Err(enigma_runtime::Error::Model { path, source }) => {
            assert_eq!(path.to_str(), Some("test.enigma"));
            source
        }
        Err(e) => panic!("expected a model error, got {e}"),
    }
}

fn with_prelude_crc_fixed(mut b: Vec<u8>) -> Vec<u8> {
    let h = header_len(&b);
    let crc = crc32fast::hash(&b[PRELUDE_LEN..PRELUDE_LEN + h]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

// ---------------------------------------------------------------------------------------------------------
// The header as docs/FORMAT.md describes it, with owned, unbounded fields so hostile headers (33 tensors,
// 5 dims) can be written. Its serde derive gives postcard the same wire shape as `Header`.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DocHeader {
    config: Config,
    tokenizer: DocTokenizer,
    tensors: Vec<DocTensor>,
    provenance: DocProvenance,
    data_offset: u64,
    data_len: u64,
    data_crc32: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DocTokenizer {
    bos: u32,
    eos: u32,
    pad: Option<u32>,
    max_token_len: u32,
    add_dummy_prefix: bool,
    byte_fallback: Option<u32>,
    chat: Option<(u32, u32)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DocTensor {
    name: String,
    dtype: u8,
    shape: Vec<u64>,
    offset: u64,
    len: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DocProvenance {
    source: String,
    tool: String,
    created_unix: u64,
    notes: String,
}

/// A reader written from docs/FORMAT.md alone.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl Rd<'_> {
    fn byte(&mut self) -> u8 {
        let v = self.b[self.at];
        self.at += 1;
        v
    }
    /// LEB128: 7 bits per byte, least significant group first, high bit set on every byte but the last.
    fn varint(&mut self, max_bytes: usize) -> u64 {
        let mut v = 0u64;
        for i in 0..max_bytes {
            let b = self.byte();
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint longer than {max_bytes} bytes");
    }
    fn u32(&mut self) -> u32 {
        u32::try_from(self.varint(5)).unwrap()
    }
    fn u64(&mut self) -> u64 {
        self.varint(10)
    }
    fn f32(&mut self) -> f32 {
        let v = f32::from_le_bytes(self.b[self.at..self.at + 4].try_into().unwrap());
        self.at += 4;
        v
    }
    fn bool(&mut self) -> bool {
        match self.byte() {
            0 => false,
            1 => true,
            b => panic!("bool byte {b}"),
        }
    }
    fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        match self.byte() {
            0 => None,
            1 => Some(f(self)),
            b => panic!("option tag {b}"),
        }
    }
    fn str(&mut self) -> String {
        let n = self.u64() as usize;
        let s = std::str::from_utf8(&self.b[self.at..self.at + n]).unwrap();
        self.at += n;
        s.to_string()
    }
    fn seq<T>(&mut self, mut f: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.u64();
        (0..n).map(|_| f(self)).collect()
    }
}

fn doc_decode(b: &[u8]) -> (DocHeader, usize) {
    let mut r = Rd { b, at: 0 };
    let config = Config {
        dim: r.u32(),
        hidden_dim: r.u32(),
        n_layers: r.u32(),
        n_heads: r.u32(),
        n_kv_heads: r.u32(),
        vocab_size: r.u32(),
        seq_len: r.u32(),
        rope_theta: r.f32(),
        norm_eps: r.f32(),
        tied_classifier: r.bool(),
    };
    let tokenizer = DocTokenizer {
        bos: r.u32(),
        eos: r.u32(),
        pad: r.option(|r| r.u32()),
        max_token_len: r.u32(),
        add_dummy_prefix: r.bool(),
        byte_fallback: r.option(|r| r.u32()),
        chat: r.option(|r| (r.u32(), r.u32())),
    };
    let tensors = r.seq(|r| DocTensor {
        name: r.str(),
        // dtype is a u8: one raw byte, not a varint.
        dtype: r.byte(),
        shape: r.seq(|r| r.u64()),
        offset: r.u64(),
        len: r.u64(),
    });
    let provenance = DocProvenance {
        source: r.str(),
        tool: r.str(),
        created_unix: r.u64(),
        notes: r.str(),
    };
    let h = DocHeader {
        config,
        tokenizer,
        tensors,
        provenance,
        data_offset: r.u64(),
        data_len: r.u64(),
        data_crc32: r.u32(),
    };
    (h, r.at)
}

/// A writer written from docs/FORMAT.md alone.
fn doc_encode(h: &DocHeader) -> Vec<u8> {
    fn varint(o: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            o.push(v as u8 | 0x80);
            v >>= 7;
        }
        o.push(v as u8);
    }
    fn str(o: &mut Vec<u8>, s: &str) {
        varint(o, s.len() as u64);
        o.extend_from_slice(s.as_bytes());
    }
    fn opt(o: &mut Vec<u8>, v: Option<u32>) {
        match v {
            None => o.push(0),
            Some(v) => {
                o.push(1);
                varint(o, v.into());
            }
        }
    }
    let mut o = Vec::new();
    let c = &h.config;
    for v in [
        c.dim,
        c.hidden_dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        c.seq_len,
    ] {
        varint(&mut o, v.into());
    }
    o.extend_from_slice(&c.rope_theta.to_le_bytes());
    o.extend_from_slice(&c.norm_eps.to_le_bytes());
    o.push(c.tied_classifier as u8);
    let t = &h.tokenizer;
    varint(&mut o, t.bos.into());
    varint(&mut o, t.eos.into());
    opt(&mut o, t.pad);
    varint(&mut o, t.max_token_len.into());
    o.push(t.add_dummy_prefix as u8);
    opt(&mut o, t.byte_fallback);
    match t.chat {
        None => o.push(0),
        Some((u, a)) => {
            o.push(1);
            varint(&mut o, u.into());
            varint(&mut o, a.into());
        }
    }
    varint(&mut o, h.tensors.len() as u64);
    for e in &h.tensors {
        str(&mut o, &e.name);
        o.push(e.dtype);
        varint(&mut o, e.shape.len() as u64);
        for d in &e.shape {
            varint(&mut o, *d);
        }
        varint(&mut o, e.offset);
        varint(&mut o, e.len);
    }
    let p = &h.provenance;
    str(&mut o, &p.source);
    str(&mut o, &p.tool);
    varint(&mut o, p.created_unix);
    str(&mut o, &p.notes);
    varint(&mut o, h.data_offset);
    varint(&mut o, h.data_len);
    varint(&mut o, h.data_crc32.into());
    o
}

fn doc_header(file: &[u8]) -> DocHeader {
    let h = header_len(file);
    let (d, used) = doc_decode(&file[PRELUDE_LEN..PRELUDE_LEN + h]);
    assert_eq!(used, h, "the header is exactly H bytes");
    d
}

/// Assembles a file from a (possibly hostile) header and the data region of `orig`, as a writer following
/// docs/FORMAT.md would: prelude, header, zero padding, data. When the new header no longer fits before
/// the data, every offset moves up by whole multiples of 64 so the data stays where its offsets say.
fn assemble(orig: &[u8], h: &DocHeader) -> Vec<u8> {
    let old = doc_header(orig);
    let data = &orig[old.data_offset as usize..];
    let mut shift = 0u64;
    loop {
        let mut h2 = h.clone();
        h2.data_offset = h2.data_offset.wrapping_add(shift);
        for t in &mut h2.tensors {
            t.offset = t.offset.wrapping_add(shift);
        }
        let hb = doc_encode(&h2);
        let start = old.data_offset + shift;
        if (PRELUDE_LEN + hb.len()) as u64 <= start {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC);
            out.extend_from_slice(&VERSION.to_le_bytes());
            out.extend_from_slice(&(hb.len() as u32).to_le_bytes());
            out.extend_from_slice(&crc32fast::hash(&hb).to_le_bytes());
            out.extend_from_slice(&hb);
            out.resize(start as usize, 0);
            out.extend_from_slice(data);
            return out;
        }
        shift += ALIGN as u64;
    }
}

/// The valid file with its header changed by `f`.
fn hostile(f: impl FnOnce(&mut DocHeader)) -> Vec<u8> {
    let mut h = doc_header(valid());
    f(&mut h);
    assemble(valid(), &h)
}

fn entry<'h>(h: &'h mut DocHeader, name: &str) -> &'h mut DocTensor {
    h.tensors.iter_mut().find(|t| t.name == name).unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// The document against real bytes.

#[test]
fn the_valid_file_loads() {
    load(valid()).unwrap();
    let m = ModelFile::from_bytes(valid(), "tiny.enigma").unwrap();
    let model = m.model(kernels()).unwrap();
    assert_eq!(model.transformer.config, tiny_config());
    assert_eq!(model.tokenizer.vocab_size(), 10);
}

#[test]
fn prelude_and_header_decode_by_hand_as_the_document_says() {
    let b = valid();
    assert_eq!(&b[0..4], b"ENGM");
    assert_eq!(u32_at(b, 4), 1);
    let h = header_len(b);
    let hb = &b[PRELUDE_LEN..PRELUDE_LEN + h];
    assert_eq!(u32_at(b, 12), crc32fast::hash(hb));

    // The first bytes by hand: seven varint u32, then two f32 LE, then a bool byte.
    let c = tiny_config();
    assert_eq!(
        &hb[..7],
        &[16, 32, 2, 2, 1, 10, 16],
        "small u32 are one byte"
    );
    assert_eq!(&hb[7..11], &10000.0f32.to_le_bytes());
    assert_eq!(&hb[11..15], &1e-5f32.to_le_bytes());
    assert_eq!(hb[15], 1, "tied_classifier");
    // bos 1, eos 2, pad Some(0), max_token_len 5, add_dummy_prefix, byte_fallback None, chat None.
    assert_eq!(&hb[16..24], &[1, 2, 1, 0, 5, 1, 0, 0]);
    // 15 tensors: 11 parameters (tied classifier) and the tokenizer's 4; the first is token_embedding.
    assert_eq!(hb[24], 15);
    assert_eq!(hb[25] as usize, "token_embedding".len());
    assert_eq!(&hb[26..41], b"token_embedding");
    assert_eq!(hb[41], DType::F32 as u8);
    assert_eq!(&hb[42..45], &[2, 10, 16], "shape: count, then varint dims");

    // The whole header, decoded by hand, equals postcard's decoding of `Header` and the writer's input.
    let (d, used) = doc_decode(hb);
    assert_eq!(used, h);
    let ph: Header<'_> = postcard::from_bytes(hb).unwrap();
    assert_eq!(d.config, c);
    assert_eq!(ph.config, c);
    assert_eq!(d.data_offset, ph.data_offset);
    assert_eq!(d.data_len, ph.data_len);
    assert_eq!(d.data_crc32, ph.data_crc32);
    assert_eq!(d.tokenizer.bos, ph.tokenizer.bos);
    assert_eq!(d.tokenizer.pad, ph.tokenizer.pad);
    assert_eq!(d.tokenizer.max_token_len, 5);
    assert_eq!(d.provenance.source, ph.provenance.source);
    assert_eq!(d.provenance.source, "test:format_errors");
    assert_eq!(d.provenance.created_unix, ph.provenance.created_unix);
    assert_eq!(d.tensors.len(), ph.tensors.len());
    for (a, p) in d.tensors.iter().zip(&ph.tensors) {
        assert_eq!(
            (a.name.as_str(), a.dtype, &a.shape[..], a.offset, a.len),
            (p.name, p.dtype, &p.shape[..], p.offset, p.len)
        );
    }
    // Tensor order: ParamLayout order, then the tokenizer's four.
    let layout = ParamLayout::new(&c);
    let names: Vec<&str> = d.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut want: Vec<&str> = layout.iter().map(|s| s.name).collect();
    want.extend([TOK_PIECES, TOK_OFFSETS, TOK_SCORES, TOK_SORTED]);
    assert_eq!(names, want);
    for (t, s) in d.tensors.iter().zip(layout.iter()) {
        assert_eq!(t.shape, &s.shape[..s.ndim()], "{}", t.name);
    }
    // Tokenizer tensors: pieces (u8, total bytes), offsets (u32, V+1), scores (f32, V), sorted (u32, V).
    let tok = &d.tensors[11..];
    let total: usize = tiny_tokenizer().pieces.iter().map(|p| p.len()).sum();
    assert_eq!((tok[0].dtype, &tok[0].shape[..]), (16, &[total as u64][..]));
    assert_eq!((tok[1].dtype, &tok[1].shape[..]), (17, &[11u64][..]));
    assert_eq!((tok[2].dtype, &tok[2].shape[..]), (0, &[10u64][..]));
    assert_eq!((tok[3].dtype, &tok[3].shape[..]), (17, &[10u64][..]));

    // Layout rules: data_offset and every offset multiples of 64 from the file start, increasing, the
    // file ends at data_offset + data_len, the data CRC covers the padding too, padding is zero.
    assert_eq!(d.data_offset % 64, 0);
    assert!(d.data_offset >= (PRELUDE_LEN + h) as u64);
    assert!(b[PRELUDE_LEN + h..d.data_offset as usize]
        .iter()
        .all(|&x| x == 0));
    assert_eq!(d.data_offset + d.data_len, b.len() as u64);
    assert_eq!(
        crc32fast::hash(&b[d.data_offset as usize..]),
        d.data_crc32,
        "data CRC"
    );
    let mut prev = d.data_offset;
    for t in &d.tensors {
        assert_eq!(t.offset % 64, 0);
        assert!(t.offset >= prev);
        assert_eq!(
            Some(t.len),
            DType::from_code(t.dtype)
                .unwrap()
                .bytes_for(t.shape.iter().product())
        );
        assert!(b[prev as usize..t.offset as usize].iter().all(|&x| x == 0));
        prev = t.offset + t.len;
    }
    assert_eq!(prev, b.len() as u64);
    // The first weight is f32 LE in place.
    let emb = &d.tensors[0];
    let w = weights(ParamLayout::new(&c).total_numel() as usize, 42);
    let at = emb.offset as usize;
    assert_eq!(&b[at..at + 4], &w[0].to_le_bytes());

    // Encoding by hand gives the writer's bytes exactly, and so does postcard on the open mirror.
    assert_eq!(doc_encode(&d), hb);
    assert_eq!(postcard::to_allocvec(&d).unwrap(), hb);
    assert_eq!(postcard::from_bytes::<DocHeader>(hb).unwrap(), d);
    // And the assembled file is byte-identical.
    assert_eq!(assemble(b, &d), b);
}

#[test]
fn wire_rules_of_postcard_as_documented() {
    // Varints: LEB128, little group first; u32 at most 5 bytes, u64 at most 10; no zigzag for unsigned.
    let enc = |v: u64| postcard::to_allocvec(&v).unwrap();
    assert_eq!(enc(0), [0]);
    assert_eq!(enc(127), [0x7f]);
    assert_eq!(enc(128), [0x80, 0x01]);
    assert_eq!(enc(300), [0xac, 0x02]);
    assert_eq!(enc(u64::MAX).len(), 10);
    assert_eq!(
        postcard::to_allocvec(&u32::MAX).unwrap(),
        [0xff, 0xff, 0xff, 0xff, 0x0f]
    );
    // u8: one raw byte, even above 127.
    assert_eq!(postcard::to_allocvec(&200u8).unwrap(), [200]);
    // f32: 4 bytes LE; bool: 0/1; Option: tag 0/1 then the value; str: varint length then UTF-8.
    assert_eq!(postcard::to_allocvec(&1.0f32).unwrap(), [0, 0, 0x80, 0x3f]);
    assert_eq!(postcard::to_allocvec(&true).unwrap(), [1]);
    assert_eq!(postcard::to_allocvec(&None::<u32>).unwrap(), [0]);
    assert_eq!(
        postcard::to_allocvec(&Some(300u32)).unwrap(),
        [1, 0xac, 0x02]
    );
    assert_eq!(postcard::to_allocvec("hé").unwrap(), [3, b'h', 0xc3, 0xa9]);
    let v: heapless::Vec<u64, 4> = [1u64, 200].into_iter().collect();
    assert_eq!(postcard::to_allocvec(&v).unwrap(), [2, 1, 0xc8, 0x01]);
    // A 5-byte u32 whose last byte has more than 4 bits, and a bool of 2, are refused.
    assert!(postcard::from_bytes::<u32>(&[0xff, 0xff, 0xff, 0xff, 0x1f]).is_err());
    assert!(postcard::from_bytes::<bool>(&[2]).is_err());
    assert!(postcard::from_bytes::<Option<u32>>(&[2, 0]).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// One bad input, one error.

#[test]
fn empty() {
    assert_eq!(parse_err(&[]), Error::Empty);
    assert_eq!(model_file_err(&[]), Error::Empty);
}

#[test]
fn truncated_at_every_cut_point() {
    let b = valid();
    let h_end = (PRELUDE_LEN + header_len(b)) as u64;
    let len = b.len() as u64;
    for cut in 1..b.len() {
        let needed = if cut < PRELUDE_LEN {
            PRELUDE_LEN as u64
        } else if (cut as u64) < h_end {
            h_end
        } else {
            len
        };
        let want = Error::Truncated {
            needed,
            len: cut as u64,
        };
        assert_eq!(parse_err(&b[..cut]), want, "cut at {cut}");
    }
    assert!(matches!(
        model_file_err(&b[..b.len() - 1]),
        Error::Truncated { .. }
    ));
}

#[test]
fn wrong_magic() {
    let mut b = valid().to_vec();
    b[..4].copy_from_slice(b"GGUF");
    assert_eq!(parse_err(&b), Error::BadMagic(*b"GGUF"));
    assert_eq!(model_file_err(&b), Error::BadMagic(*b"GGUF"));
    // A file shorter than the prelude is truncated first, whatever its first bytes.
    assert!(matches!(parse_err(b"GGUF"), Error::Truncated { .. }));
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 2, 0x0100_0000, u32::MAX] {
        let mut b = valid().to_vec();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let want = Error::UnsupportedVersion {
            found: v,
            supported: 1,
        };
        assert_eq!(parse_err(&b), want);
        assert_eq!(model_file_err(&b), want);
    }
}

#[test]
fn header_checksum_mismatch() {
    let b = valid();
    let expected = u32_at(b, 12);
    // A flipped header byte.
    let mut c = b.to_vec();
    c[PRELUDE_LEN + 3] ^= 0x40;
    let found = crc32fast::hash(&c[PRELUDE_LEN..PRELUDE_LEN + header_len(b)]);
    assert_eq!(parse_err(&c), Error::HeaderChecksum { expected, found });
    // A flipped CRC.
    let mut c = b.to_vec();
    c[12] ^= 1;
    assert!(matches!(parse_err(&c), Error::HeaderChecksum { .. }));
    // A header length that disagrees with the header: the CRC over the wrong span fails.
    let mut c = b.to_vec();
    c[8..12].copy_from_slice(&(header_len(b) as u32 - 1).to_le_bytes());
    assert!(matches!(parse_err(&c), Error::HeaderChecksum { .. }));
}

#[test]
fn header_length_past_the_end() {
    let mut b = valid().to_vec();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        parse_err(&b),
        Error::Truncated {
            needed: PRELUDE_LEN as u64 + u32::MAX as u64,
            len: b.len() as u64
        }
    );
}

#[test]
fn undecodable_headers_with_a_good_crc() {
    let b = valid();
    let h = header_len(b);
    // An empty header, a header cut short, the tied_classifier bool set to 2, an option tag of 7.
    let cases: [fn(&mut [u8], u32); 6] = [
        |v, _| v[8..12].copy_from_slice(&0u32.to_le_bytes()),
        |v, h| v[8..12].copy_from_slice(&(h - 10).to_le_bytes()),
        |v, _| v[PRELUDE_LEN + 15] = 2,
        |v, _| v[PRELUDE_LEN + 18] = 7,
        // A 6-byte varint for dim.
        |v, _| v[PRELUDE_LEN..PRELUDE_LEN + 6].fill(0xff),
        // A tensor name that is not UTF-8.
        |v, _| v[PRELUDE_LEN + 26] = 0xff,
    ];
    for (i, f) in cases.iter().enumerate() {
        let mut c = b.to_vec();
        f(&mut c, h as u32);
        let c = with_prelude_crc_fixed(c);
        assert_eq!(parse_err(&c), Error::HeaderCorrupt, "case {i}");
    }
    // More than 32 tensors, or more than 4 dims: heapless capacity, so the header does not decode.
    let extra = hostile(|h| {
        let t = h.tensors[0].clone();
        while h.tensors.len() <= MAX_TENSORS {
            h.tensors.push(t.clone());
        }
    });
    assert_eq!(parse_err(&extra), Error::HeaderCorrupt);
    let dims = hostile(|h| entry(h, "wq").shape = vec![1; MAX_DIMS + 1]);
    assert_eq!(parse_err(&dims), Error::HeaderCorrupt);
}

#[test]
fn corrupted_data() {
    let b = valid();
    let d = doc_header(b);
    for at in [d.data_offset as usize, b.len() / 2, b.len() - 1] {
        let mut c = b.to_vec();
        c[at] ^= 0x10;
        // The structure is fine; only the checksum tells.
        let mem = AlignedBytes::copy_from(&c);
        let f = EnigmaFile::parse(&mem).unwrap();
        let found = crc32fast::hash(&c[d.data_offset as usize..]);
        let want = Error::DataChecksum {
            expected: d.data_crc32,
            found,
        };
        assert_eq!(f.verify_checksum(), Err(want.clone()));
        assert_eq!(model_file_err(&c), want);
    }
    // A wrong CRC in the header.
    let c = hostile(|h| h.data_crc32 ^= 1);
    assert!(matches!(model_file_err(&c), Error::DataChecksum { .. }));
}

#[test]
fn tensor_offset_past_the_end() {
    let b = valid();
    let file_len = b.len() as u64;
    let c = hostile(|h| {
        let t = h.tensors.last_mut().unwrap();
        t.offset += 64 * 100;
    });
    match parse_err(&c) {
        Error::TensorOutOfBounds { name, .. } => assert_eq!(name.as_str(), TOK_SORTED),
        e => panic!("{e:?}"),
    }
    // An offset so large that offset + len overflows u64.
    let c = hostile(|h| entry(h, "w2").offset = u64::MAX - 63);
    assert!(matches!(parse_err(&c), Error::TensorOutOfBounds { name, .. } if name == "w2"));
    // A length that runs past the data: the declared len disagrees with dtype * shape first...
    let c = hostile(|h| entry(h, "final_norm").len += 4);
    assert!(matches!(parse_err(&c), Error::TensorLength { name, .. } if name == "final_norm"));
    // ...and a data_len past the end of the file is a truncation.
    let c = hostile(|h| h.data_len += 64);
    assert_eq!(
        parse_err(&c),
        Error::Truncated {
            needed: file_len + 64,
            len: file_len
        }
    );
    // data_offset + data_len overflowing, data_offset misaligned or inside the header: corrupt header.
    let c = hostile(|h| h.data_len = u64::MAX);
    assert_eq!(parse_err(&c), Error::HeaderCorrupt);
    let c = hostile(|h| h.data_offset += 8);
    assert_eq!(parse_err(&c), Error::HeaderCorrupt);
    let c = hostile(|h| h.data_offset = 0);
    assert_eq!(parse_err(&c), Error::HeaderCorrupt);
}

#[test]
fn misaligned_offset() {
    let c = hostile(|h| entry(h, "wk").offset += 4);
    assert_eq!(
        parse_err(&c),
        Error::TensorMisaligned {
            name: nm("wk"),
            offset: doc_header(valid())
                .tensors
                .iter()
                .find(|t| t.name == "wk")
                .unwrap()
                .offset
                + 4
        }
    );
    // The reader also needs the buffer itself on a 64-byte boundary.
    let mem = AlignedBytes::copy_from(&[&[0u8][..], valid()].concat());
    assert_eq!(
        EnigmaFile::parse(&mem[1..]).map(|_| ()),
        Err(Error::BufferMisaligned)
    );
}

#[test]
fn overlapping_tensors() {
    // wv starts where wk starts.
    let c = hostile(|h| {
        let at = entry(h, "wk").offset;
        entry(h, "wv").offset = at;
    });
    assert_eq!(parse_err(&c), Error::TensorOverlap { name: nm("wv") });
    // The first tensor inside the prelude and header.
    let c = hostile(|h| h.tensors[0].offset = 0);
    assert_eq!(
        parse_err(&c),
        Error::TensorOverlap {
            name: nm(config::TOKEN_EMBEDDING)
        }
    );
    // Out of order in the table counts as overlap too.
    let c = hostile(|h| h.tensors.swap(1, 2));
    assert!(matches!(parse_err(&c), Error::TensorOverlap { .. }));
}

#[test]
fn unknown_dtype_code() {
    for code in [5u8, 15, 18, 99, 255] {
        let c = hostile(|h| entry(h, "wo").dtype = code);
        assert_eq!(
            parse_err(&c),
            Error::UnknownDType {
                name: nm("wo"),
                code
            }
        );
        assert_eq!(
            model_file_err(&c),
            Error::UnknownDType {
                name: nm("wo"),
                code
            }
        );
    }
}

#[test]
fn known_dtype_that_does_not_fit() {
    // f16 with the f32 byte count: the length check catches it.
    let c = hostile(|h| entry(h, "w1").dtype = DType::F16 as u8);
    assert!(matches!(parse_err(&c), Error::TensorLength { name, .. } if name == "w1"));
    // q8_0 over a row count that is not whole blocks: (2, 16) norms have 32 elements, so ok, but the
    // final norm (16) is not a whole block.
    let c = hostile(|h| {
        let t = entry(h, "final_norm");
        t.dtype = DType::Q8_0 as u8;
    });
    assert_eq!(parse_err(&c), Error::HeaderCorrupt);
    // u32 with a consistent length parses, but no forward pass multiplies a u32 matrix.
    let c = hostile(|h| entry(h, "w3").dtype = DType::U32 as u8);
    let mem = AlignedBytes::copy_from(&c);
    let f = EnigmaFile::parse(&mem).unwrap();
    let err = Transformer::from_file(&f, kernels())
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedDType { ref name, dtype: "u32" } if name == "w3"),
        "{err:?}"
    );
    // A norm that is not f32.
    let c = hostile(|h| {
        let t = entry(h, "ffn_norm");
        t.dtype = DType::U32 as u8;
    });
    let mem = AlignedBytes::copy_from(&c);
    let f = EnigmaFile::parse(&mem).unwrap();
    assert!(matches!(
        Transformer::from_file(&f, kernels()).map(|_| ()),
        Err(Error::UnsupportedDType { .. })
    ));
}

#[test]
fn zero_or_empty_shape() {
    let c = hostile(|h| entry(h, "wq").shape = vec![]);
    assert!(matches!(parse_err(&c), Error::TensorLength { name, .. } if name == "wq"));
    let c = hostile(|h| entry(h, "wq").shape = vec![2, 0, 16]);
    assert!(matches!(parse_err(&c), Error::TensorLength { name, .. } if name == "wq"));
    // dims whose product overflows u64
    let c = hostile(|h| entry(h, "wq").shape = vec![u64::MAX, u64::MAX]);
    assert_eq!(parse_err(&c), Error::HeaderCorrupt);
}

#[test]
fn shape_that_disagrees_with_the_config() {
    // wk is (L, NKV*HS, D) = (2, 8, 16); store it as (2, 16, 8): same bytes, wrong shape.
    let c = hostile(|h| entry(h, "wk").shape = vec![2, 16, 8]);
    let mem = AlignedBytes::copy_from(&c);
    let f = EnigmaFile::parse(&mem).unwrap();
    f.verify_checksum().unwrap();
    assert_eq!(
        Transformer::from_file(&f, kernels()).map(|_| ()),
        Err(Error::ShapeMismatch {
            name: "wk",
            expected: [2, 8, 16, 0],
            found: [2, 16, 8, 0]
        })
    );
    // A config that disagrees with every tensor: more layers than stored.
    let c = hostile(|h| h.config.n_layers = 3);
    let mem = AlignedBytes::copy_from(&c);
    let f = EnigmaFile::parse(&mem).unwrap();
    assert!(matches!(
        Transformer::from_file(&f, kernels()).map(|_| ()),
        Err(Error::ShapeMismatch {
            name: "attn_norm",
            ..
        })
    ));
    // Tokenizer tensors are checked against the config's vocabulary too.
    let c = hostile(|h| h.config.vocab_size = 9);
    let mem = AlignedBytes::copy_from(&c);
    let f = EnigmaFile::parse(&mem).unwrap();
    assert!(matches!(
        Tokenizer::from_file(&f).map(|_| ()),
        Err(Error::ShapeMismatch {
            name: TOK_OFFSETS,
            ..
        })
    ));
}

#[test]
fn missing_tensors() {
    for name in [config::W2, config::FINAL_NORM, config::TOKEN_EMBEDDING] {
        let c = hostile(|h| h.tensors.retain(|t| t.name != name));
        let mem = AlignedBytes::copy_from(&c);
        let f = EnigmaFile::parse(&mem).unwrap();
        assert_eq!(
            Transformer::from_file(&f, kernels()).map(|_| ()),
            Err(Error::MissingTensor { name })
        );
    }
    // An untied classifier needs its own tensor.
    let c = hostile(|h| h.config.tied_classifier = false);
    assert_eq!(
        load(&c),
        Err(Error::MissingTensor {
            name: config::CLASSIFIER
        })
    );
    for name in [TOK_PIECES, TOK_OFFSETS, TOK_SCORES, TOK_SORTED] {
        let c = hostile(|h| h.tensors.retain(|t| t.name != name));
        let mem = AlignedBytes::copy_from(&c);
        let f = EnigmaFile::parse(&mem).unwrap();
        assert_eq!(
            Tokenizer::from_file(&f).map(|_| ()),
            Err(Error::MissingTensor { name })
        );
    }
}

#[test]
fn bad_configs() {
    let cases: [fn(&mut Config); 9] = [
        |c| c.n_heads = 3,
        |c| c.n_kv_heads = 0,
        |c| c.n_kv_heads = 4,
        |c| c.dim = 0,
        |c| c.seq_len = 0,
        |c| c.rope_theta = f32::NAN,
        |c| c.norm_eps = -1.0,
        |c| c.vocab_size = u32::MAX,
        |c| c.n_layers = u32::MAX,
    ];
    for f in cases {
        let c = hostile(|h| f(&mut h.config));
        assert!(
            matches!(parse_err(&c), Error::BadConfig(_)),
            "{:?}",
            parse_err(&c)
        );
        assert!(matches!(model_file_err(&c), Error::BadConfig(_)));
    }
    let c = hostile(|h| h.config.n_heads = 3);
    assert_eq!(parse_err(&c), Error::BadConfig("n_heads must divide dim"));
}

#[test]
fn bad_tokenizer_records() {
    // Special ids outside the vocabulary, including a byte-fallback base whose 256 bytes run past it.
    let cases: [fn(&mut DocTokenizer); 7] = [
        |t| t.bos = 10,
        |t| t.eos = u32::MAX,
        |t| t.pad = Some(1000),
        |t| t.byte_fallback = Some(0),
        |t| t.byte_fallback = Some(u32::MAX),
        |t| t.chat = Some((3, 10)),
        |t| t.chat = Some((u32::MAX, 4)),
    ];
    for f in cases {
        let c = hostile(|h| f(&mut h.tokenizer));
        let mem = AlignedBytes::copy_from(&c);
        let f = EnigmaFile::parse(&mem).unwrap();
        assert!(matches!(
            Tokenizer::from_file(&f).map(|_| ()),
            Err(Error::BadTokenizer(_))
        ));
    }
    // The pieces stored as u32 instead of u8.
    let c = hostile(|h| {
        let t = entry(h, TOK_PIECES);
        t.dtype = DType::U32 as u8;
        t.shape = vec![t.len / 4];
    });
    let mem = AlignedBytes::copy_from(&c);
    match EnigmaFile::parse(&mem) {
        // 23 piece bytes are not a whole number of u32.
        Err(e) => assert!(matches!(e, Error::TensorLength { .. }), "{e:?}"),
        Ok(f) => assert!(matches!(
            Tokenizer::from_file(&f).map(|_| ()),
            Err(Error::UnsupportedDType { .. })
        )),
    }
    // The pieces as a (1, n) matrix of u8: the reader wants one dim.
    let c = hostile(|h| {
        let t = entry(h, TOK_PIECES);
        t.shape = vec![1, t.len];
    });
    let mem = AlignedBytes::copy_from(&c);
    let f = EnigmaFile::parse(&mem).unwrap();
    assert!(matches!(
        Tokenizer::from_file(&f).map(|_| ()),
        Err(Error::UnsupportedDType { .. })
    ));
}

// ---------------------------------------------------------------------------------------------------------
// Nothing panics, whatever the bytes.

/// Runs every reader entry point; each may fail but none may panic or read out of bounds.
fn exercise(bytes: &[u8]) {
    let mem = AlignedBytes::copy_from(bytes);
    let Ok(f) = EnigmaFile::parse(&mem) else {
        return;
    };
    let _ = f.verify_checksum();
    let _ = f.tensors().map(|t| t.numel()).sum::<u64>();
    let _ = Transformer::from_file(&f, kernels());
    if let Ok(tok) = Tokenizer::from_file(&f) {
        let mut ids = [0u32; 64];
        for text in ["", "ab ba\nab", "zzz é"] {
            if let Ok(n) = tok.encode(text, true, true, &mut ids) {
                let mut prev = tok.bos();
                for &id in &ids[..n] {
                    let _ = tok.decode(prev, id);
                    prev = id;
                }
            }
        }
    }
    let _ = ModelFile::from_bytes(bytes, "fuzz.enigma");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn truncations_never_panic(cut in any::<prop::sample::Index>()) {
        let b = valid();
        let cut = cut.index(b.len());
        exercise(&b[..cut]);
        prop_assert!(EnigmaFile::parse(&AlignedBytes::copy_from(&b[..cut])).is_err());
    }

    #[test]
    fn byte_flips_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6)) {
        let mut b = valid().to_vec();
        for (at, x) in &flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        exercise(&b);
    }

    /// Flips inside the header with its CRC made right again, so they reach the decoder and the checks.
    #[test]
    fn header_flips_with_a_fixed_crc_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)) {
        let mut b = valid().to_vec();
        let h = header_len(&b);
        for (at, x) in &flips {
            let i = PRELUDE_LEN + at.index(h);
            b[i] ^= x;
        }
        exercise(&with_prelude_crc_fixed(b));
    }

    /// Flips in the tensor data, checked without the data CRC: tokenizer arrays must still be validated.
    #[test]
    fn data_flips_never_panic_even_unchecked(flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8)) {
        let mut b = valid().to_vec();
        let start = doc_header(&b).data_offset as usize;
        let n = b.len() - start;
        for (at, x) in &flips {
            b[start + at.index(n)] ^= x;
        }
        exercise(&b);
    }

    /// Random tokenizer records: special ids anywhere, with or without byte fallback and chat markers.
    #[test]
    fn hostile_tokenizer_records_never_panic(
        bos in any::<u32>(),
        eos in 0u32..12,
        pad in prop::option::of(any::<u32>()),
        max_token_len in any::<u32>(),
        add_dummy_prefix in any::<bool>(),
        byte_fallback in prop::option::of(prop_oneof![any::<u32>(), 0u32..12]),
        chat in prop::option::of((0u32..12, any::<u32>())),
    ) {
        let c = hostile(|h| {
            h.tokenizer = DocTokenizer { bos: bos % 16, eos, pad, max_token_len, add_dummy_prefix, byte_fallback, chat };
        });
        exercise(&c);
    }

    /// Random header fields within the encoding: any value, any dtype, any shape.
    #[test]
    fn hostile_tables_never_panic(
        which in any::<prop::sample::Index>(),
        dtype in any::<u8>(),
        shape in prop::collection::vec(0u64..40, 0..5),
        offset in prop_oneof![any::<u64>(), (0u64..64).prop_map(|k| k * 64)],
        len in prop_oneof![any::<u64>(), 0u64..5000],
        vocab in 1u32..20,
        byte_fallback in prop::option::of(any::<u32>()),
    ) {
        let c = hostile(|h| {
            let i = which.index(h.tensors.len());
            let t = &mut h.tensors[i];
            t.dtype = dtype;
            t.shape = shape;
            t.offset = offset;
            t.len = len;
            h.config.vocab_size = vocab;
            h.tokenizer.byte_fallback = byte_fallback;
        });
        exercise(&c);
    }
}
