//! The GGUF reader and writer against files of the pip `gguf` package (llama.cpp's Python library, driven
//! by `gguf_pip.py` beside this file), and against corrupt and hostile files.

use enigma_core::config::{Config, ParamLayout};
use enigma_core::kernels::DType;
use enigma_core::EnigmaFile;
use enigma_models::gguf::{import, read::Gguf, read::GgufFiles, write};
use enigma_runtime::{AlignedBytes, ModelWriter, TokenizerData};
use enigma_testkit::{gguf_pip, XorShift};
use proptest::prelude::*;
use std::path::Path;

#[test]
fn dequantized_values_equal_the_pip_packages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    if gguf_pip("dequantized_values_equal_the_pip_packages", &["quants", d]).is_none() {
        return;
    }
    let files = GgufFiles::open(&dir.path().join("quants.gguf")).unwrap();
    let expected = GgufFiles::open(&dir.path().join("expected.gguf")).unwrap();
    let (g, e) = (files.parse().unwrap(), expected.parse().unwrap());
    let names: Vec<&str> = g.tensors.iter().map(|t| t.ty.name()).collect();
    assert_eq!(
        names,
        ["f32", "f16", "bf16", "q8_0", "q4_0", "q2_K", "q3_K", "q4_K", "q5_K", "q6_K"]
    );
    for t in &g.tensors {
        let want = e.tensor(t.name).unwrap();
        assert_eq!(t.shape(), [3, 512]);
        let (ours, theirs) = (t.to_f32(), want.to_f32());
        // Bit for bit: the same products in the same order as gguf.quants' numpy.
        let differ = ours
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            differ,
            None,
            "{}: element {:?} is {:?}, gguf.quants says {:?}",
            t.name,
            differ,
            differ.map(|i| ours[i]),
            differ.map(|i| theirs[i])
        );
        assert!(ours.iter().any(|v| *v != 0.0), "{}", t.name);
    }
}

/// Q4_K and Q6_K tensors are kept as they are (their values are the pip package's exactly); a tensor whose
/// layers mix them (`ffn_down` here, as in llama.cpp's Q4_K_M) becomes q8_0, within its rounding.
#[test]
fn a_q4_k_m_style_model_keeps_its_k_quants_and_widens_mixed_tensors() {
    let test = "a_q4_k_m_style_model_keeps_its_k_quants_and_widens_mixed_tensors";
    let dir = tempfile::tempdir().unwrap();
    if gguf_pip(test, &["model", dir.path().to_str().unwrap()]).is_none() {
        return;
    }
    let files = GgufFiles::open(&dir.path().join("model.gguf")).unwrap();
    let g = files.parse().unwrap();
    let bytes = import::to_enigma(&g, "model.gguf").unwrap();
    let mem = AlignedBytes::copy_from(&bytes);
    let f = EnigmaFile::parse(&mem).unwrap();
    let expected = GgufFiles::open(&dir.path().join("expected.gguf")).unwrap();
    let e = expected.parse().unwrap();
    let c = *f.config();
    assert_eq!(
        (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads),
        (256, 512, 2, 4, 2)
    );
    assert_eq!(c.vocab_size, 512);
    assert!(!c.tied_classifier);
    assert!(f.tensor(enigma_models::gguf::KEEP_TEMPLATE).is_some());
    let mut kept = 0;
    for spec in ParamLayout::new(&c).iter() {
        let t = f.tensor(spec.name).unwrap();
        let stacked = import::is_stacked(&spec);
        let layers = if stacked { c.n_layers } else { 1 };
        let types: Vec<&str> = (0..layers)
            .map(|l| {
                g.tensor(&import::gguf_name(spec.name, l).unwrap())
                    .unwrap()
                    .ty
                    .name()
            })
            .collect();
        let want_dtype = match types.as_slice() {
            _ if spec.is_norm() => DType::F32,
            [t, rest @ ..] if rest.iter().all(|r| r == t) && *t == "q4_K" => DType::Q4K,
            [t, rest @ ..] if rest.iter().all(|r| r == t) && *t == "q6_K" => DType::Q6K,
            _ => DType::Q8_0,
        };
        assert_eq!(t.dtype, want_dtype, "{} ({types:?})", spec.name);
        kept += usize::from(matches!(want_dtype, DType::Q4K | DType::Q6K));
        let mut ours = Vec::new();
        if spec.is_norm() {
            ours.extend_from_slice(f.f32s(spec.name, &spec.shape[..spec.ndim()]).unwrap());
        } else {
            let w = f.weight(spec).unwrap();
            let mut row = vec![0.0; w.cols()];
            for r in 0..w.rows() {
                w.row_to_f32(r, &mut row);
                ours.extend_from_slice(&row);
            }
        }
        let stacked = import::is_stacked(&spec);
        let layers = if stacked { c.n_layers } else { 1 };
        let mut theirs = Vec::new();
        for l in 0..layers {
            let name = import::gguf_name(spec.name, l).unwrap();
            theirs.extend(e.tensor(&name).unwrap().to_f32());
        }
        assert_eq!(ours.len(), theirs.len(), "{}", spec.name);
        if want_dtype != DType::Q8_0 {
            assert!(ours == theirs, "{}: kept as it was", spec.name);
            continue;
        }
        // q8_0 rounds each value to half a step of its block's scale (amax / 127).
        for (b, (o, t)) in ours.chunks(32).zip(theirs.chunks(32)).enumerate() {
            let amax = t.iter().fold(0f32, |m, v| m.max(v.abs()));
            let tol = amax / 127.0 * 0.5 + amax * 1e-3 + 1e-7;
            for (x, y) in o.iter().zip(t) {
                assert!((x - y).abs() <= tol, "{} block {b}: {x} vs {y}", spec.name);
            }
        }
    }
    // The embedding, wq, wk, wv, wo, w1, w3 and the classifier.
    assert_eq!(kept, 8);
}

/// Every position's logits of `tokens` through our forward pass.
fn logits(file: &EnigmaFile<'_>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let t = enigma_core::Transformer::from_file(file, enigma_core::kernels::kernels()).unwrap();
    let mut bufs = enigma_runtime::HostSession::try_new(&t, 64).unwrap();
    let (mut cache, mut scratch) = bufs.parts(&t.config).unwrap();
    let mut out = vec![Vec::new(); tokens.len()];
    let serial = enigma_core::model::Serial;
    t.forward_each(&serial, &mut cache, &mut scratch, tokens, 0, &mut |i, l| {
        out[i] = l.to_vec()
    })
    .unwrap();
    out
}

/// The Q4_K/Q6_K products (the SIMD tier this CPU has) against the same model with every matrix
/// dequantized to f32: they differ only by the q8_0 rounding of the activations.
#[test]
fn k_quant_products_follow_the_dequantized_weights() {
    let test = "k_quant_products_follow_the_dequantized_weights";
    let dir = tempfile::tempdir().unwrap();
    if gguf_pip(test, &["model", dir.path().to_str().unwrap()]).is_none() {
        return;
    }
    let files = GgufFiles::open(&dir.path().join("model.gguf")).unwrap();
    let bytes = import::to_enigma(&files.parse().unwrap(), "model.gguf").unwrap();
    let mem = AlignedBytes::copy_from(&bytes);
    let native = EnigmaFile::parse(&mem).unwrap();
    assert_eq!(native.tensor("w1").unwrap().dtype, DType::Q4K);
    let (wide, _) = enigma_runtime::quantize::requantize(&native, DType::F32).unwrap();
    let wide_mem = AlignedBytes::copy_from(&wide);
    let wide = EnigmaFile::parse(&wide_mem).unwrap();
    let tokens = [1u32, 40, 7, 300, 511, 12, 99, 3];
    // The same weights in q8_0 meet the same activation rounding: its distance from f32 is the yardstick
    // (this random model amplifies the rounding to ~10% of the largest logit at some positions).
    let (q8, _) = enigma_runtime::quantize::requantize(&native, DType::Q8_0).unwrap();
    let q8_mem = AlignedBytes::copy_from(&q8);
    let q8 = EnigmaFile::parse(&q8_mem).unwrap();
    let (ours, q8, exact) = (
        logits(&native, &tokens),
        logits(&q8, &tokens),
        logits(&wide, &tokens),
    );
    let dist = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    for pos in 0..tokens.len() {
        let scale = exact[pos].iter().fold(0f32, |m, v| m.max(v.abs()));
        let (kq, q8) = (dist(&ours[pos], &exact[pos]), dist(&q8[pos], &exact[pos]));
        eprintln!("position {pos}: k-quants {kq:.3}, q8_0 {q8:.3}, largest logit {scale:.1}");
        assert!(
            kq <= 1.5 * q8 + 1e-3 * scale,
            "position {pos}: {kq} against q8_0's {q8}"
        );
    }
}

/// `add_bos_token` false survives GGUF → `.enigma` → GGUF, and text then encodes without BOS; true (the
/// default) with it.
#[test]
fn add_bos_token_is_kept_and_applied() {
    for adds in [true, false] {
        let bytes = tiny_enigma_with(1, |w| {
            if !adds {
                w.without_bos();
            }
        });
        let mem = AlignedBytes::copy_from(&bytes);
        let gguf = write::to_gguf(&EnigmaFile::parse(&mem).unwrap(), "tiny").unwrap();
        let g = Gguf::parse(&gguf).unwrap();
        let key = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool());
        assert_eq!(key, Some(adds));
        let back = import::to_enigma(&g, "tiny.gguf").unwrap();
        let mem = AlignedBytes::copy_from(&back);
        let file = EnigmaFile::parse(&mem).unwrap();
        let tok = enigma_core::Tokenizer::from_file(&file).unwrap();
        assert_eq!(tok.adds_bos(), adds);
        let ids = enigma_runtime::tokenize::encode(&tok, "ab a", true, false).unwrap();
        assert_eq!(ids.first() == Some(&tok.bos()), adds, "{ids:?}");
    }
}

/// A tiny model (dim 32, one layer, 300 tokens with byte fallback) as `.enigma` bytes.
fn tiny_enigma(seed: u64) -> Vec<u8> {
    tiny_enigma_with(seed, |_| {})
}

fn tiny_enigma_with(seed: u64, extra: impl FnOnce(&mut ModelWriter<'_>)) -> Vec<u8> {
    let c = Config {
        dim: 32,
        hidden_dim: 64,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        vocab_size: 300,
        seq_len: 16,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        tied_classifier: true,
    };
    let mut pieces: Vec<Vec<u8>> =
        vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    pieces.extend((0..256).map(|b| format!("<0x{b:02X}>").into_bytes()));
    pieces.extend((0..41).map(|i| {
        format!(
            "{}{}",
            if i % 2 == 0 { " " } else { "" },
            (b'a' + i as u8 % 26) as char
        )
        .repeat(1 + i / 26)
        .into_bytes()
    }));
    let scores = (0..300).map(|i| -(i as f32)).collect();
    let tok = TokenizerData {
        pieces,
        scores,
        bos: 1,
        eos: 2,
        pad: None,
        add_dummy_prefix: true,
        chat: None,
        split: enigma_core::pretok::Split::None,
        added: Vec::new(),
    };
    let mut rng = XorShift::new(seed);
    let params = rng.fill(ParamLayout::new(&c).total_numel() as usize, -0.5, 0.5);
    let mut w = ModelWriter::new(c, tok);
    enigma_runtime::quantize::add_params(&mut w, &c, &params, DType::Q8_0).unwrap();
    extra(&mut w);
    w.to_bytes().unwrap()
}

fn tiny_gguf() -> Vec<u8> {
    let bytes = tiny_enigma(1);
    let mem = AlignedBytes::copy_from(&bytes);
    let file = EnigmaFile::parse(&mem).unwrap();
    write::to_gguf(&file, "tiny").unwrap()
}

/// Parses and imports: the result must be an error of one line, or a model; never a panic.
fn outcome(bytes: &[u8]) -> Result<(), String> {
    let g = Gguf::parse(bytes).map_err(|e| format!("{e:#}"))?;
    import::to_enigma(&g, "x").map_err(|e| format!("{e:#}"))?;
    Ok(())
}

fn one_line_err(bytes: &[u8], what: &str) -> String {
    match outcome(bytes) {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => {
            assert!(!e.contains('\n'), "{what}: a multi-line error: {e}");
            e
        }
    }
}

#[test]
fn the_writer_round_trips_through_the_reader() {
    let bytes = tiny_enigma(2);
    let mem = AlignedBytes::copy_from(&bytes);
    let f = EnigmaFile::parse(&mem).unwrap();
    let g_bytes = write::to_gguf(&f, "tiny").unwrap();
    let g = Gguf::parse(&g_bytes).unwrap();
    assert_eq!(g.version, 3);
    let back = import::to_enigma(&g, "tiny").unwrap();
    let mem2 = AlignedBytes::copy_from(&back);
    let f2 = EnigmaFile::parse(&mem2).unwrap();
    assert_eq!(f.config(), f2.config());
    for spec in ParamLayout::new(f.config()).iter() {
        let (a, b) = (f.tensor(spec.name).unwrap(), f2.tensor(spec.name).unwrap());
        assert_eq!(
            (a.dtype, a.shape, a.bytes),
            (b.dtype, b.shape, b.bytes),
            "{}",
            spec.name
        );
    }
    let t1 = enigma_core::Tokenizer::from_file(&f).unwrap();
    let t2 = enigma_core::Tokenizer::from_file(&f2).unwrap();
    let mut a = vec![0; 64];
    let mut b = vec![0; 64];
    let text = "ab a bb é\n";
    let na = t1.encode(text, true, false, &mut a).unwrap();
    let nb = t2.encode(text, true, false, &mut b).unwrap();
    assert_eq!(a[..na], b[..nb]);
}

#[test]
fn truncation_at_every_cut_is_a_one_line_error() {
    let g = tiny_gguf();
    assert_eq!(outcome(&g), Ok(()));
    for cut in 0..g.len() {
        one_line_err(&g[..cut], &format!("cut at {cut}"));
    }
}

/// Offset of the first tensor info: after the header and every key-value pair.
fn tensor_table_at(g: &[u8]) -> usize {
    let parsed = Gguf::parse(g).unwrap();
    let first = parsed.tensors[0].name;
    // The name is written as a u64 length then its bytes; find it after the metadata.
    let needle = [&(first.len() as u64).to_le_bytes()[..], first.as_bytes()].concat();
    g.windows(needle.len()).rposition(|w| w == needle).unwrap()
}

#[test]
fn hostile_headers_are_refused_with_a_reason() {
    let g = tiny_gguf();
    let set = |at: usize, v: &[u8]| {
        let mut b = g.clone();
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad magic", set(0, b"GGUG"), "not a GGUF file"),
        ("version 4", set(4, &4u32.to_le_bytes()), "version 4"),
        ("version 0", set(4, &0u32.to_le_bytes()), "version 0"),
        ("big-endian", set(4, &3u32.to_be_bytes()), "big-endian"),
        ("huge tensor count", set(8, &u64::MAX.to_le_bytes()), ""),
        (
            "huge metadata count",
            set(16, &(u64::MAX / 2).to_le_bytes()),
            "",
        ),
        (
            "huge key length",
            set(24, &u64::MAX.to_le_bytes()),
            "truncated",
        ),
    ];
    let t = tensor_table_at(&g);
    let name_len = u64::from_le_bytes(g[t..t + 8].try_into().unwrap()) as usize;
    let dims_at = t + 8 + name_len + 4;
    // The first tensor is the embedding: 2 dims, then its type and offset.
    let ty_at = dims_at + 16;
    let mut cases = cases;
    cases.extend([
        (
            "five dims",
            set(t + 8 + name_len, &5u32.to_le_bytes()),
            "dimensions",
        ),
        (
            "a dim product that overflows",
            set(dims_at, &u64::MAX.to_le_bytes()),
            "overflowing",
        ),
        ("an unknown type", set(ty_at, &3u32.to_le_bytes()), "q4_1"),
        (
            "an offset past the end",
            set(ty_at + 4, &(1u64 << 40).to_le_bytes()),
            "past the end",
        ),
        (
            "a misaligned offset",
            set(ty_at + 4, &4u64.to_le_bytes()),
            "alignment",
        ),
    ]);
    for (what, bytes, says) in &cases {
        let e = one_line_err(bytes, what);
        assert!(e.contains(says), "{what}: {e}");
    }
    // general.alignment of 3: not a power of two.
    let key = b"general.alignment";
    let at = g.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
    let e = one_line_err(&set(at, &3u32.to_le_bytes()), "alignment 3");
    assert!(e.contains("power of two"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_corruption_never_panics(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut g = tiny_gguf();
        // Most of the file is tensor data; aim the flips at the header and tables.
        let head = tensor_table_at(&g) + 200;
        for (i, v) in flips {
            let at = i.index(head.min(g.len()));
            g[at] = v;
        }
        let _ = outcome(&g);
    }
}

#[test]
fn split_files_are_joined_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let g = tiny_gguf();
    let one = dir.path().join("tiny.gguf");
    std::fs::write(&one, &g).unwrap();
    assert!(enigma_models::gguf::import_file(&one).is_ok());
    // A name that says "part 1 of 2" with no second part: the opening says which file is missing.
    let split = dir.path().join("tiny-00001-of-00002.gguf");
    std::fs::write(&split, &g).unwrap();
    let e = format!(
        "{:#}",
        enigma_models::gguf::import_file(&split).unwrap_err()
    );
    assert!(e.contains("tiny-00002-of-00002.gguf"), "{e}");
    assert!(Path::new(&split).exists());
}

#[test]
fn a_split_model_by_the_pip_writer_joins_and_its_big_endian_twin_is_named() {
    let test = "a_split_model_by_the_pip_writer_joins_and_its_big_endian_twin_is_named";
    let dir = tempfile::tempdir().unwrap();
    if gguf_pip(test, &["variants", dir.path().to_str().unwrap()]).is_none() {
        return;
    }
    let whole = enigma_models::gguf::import_file(&dir.path().join("model.gguf")).unwrap();
    // Any part names the model.
    let split =
        enigma_models::gguf::import_file(&dir.path().join("split-00002-of-00003.gguf")).unwrap();
    let (a, b) = (
        AlignedBytes::copy_from(&whole),
        AlignedBytes::copy_from(&split),
    );
    let (fa, fb) = (
        EnigmaFile::parse(&a).unwrap(),
        EnigmaFile::parse(&b).unwrap(),
    );
    assert_eq!(fa.config(), fb.config());
    let (ta, tb): (Vec<_>, Vec<_>) = (fa.tensors().collect(), fb.tensors().collect());
    assert_eq!(ta.len(), tb.len());
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!(
            (x.name, x.dtype, x.shape, x.bytes),
            (y.name, y.dtype, y.shape, y.bytes)
        );
    }
    // A part missing: named.
    std::fs::remove_file(dir.path().join("split-00003-of-00003.gguf")).unwrap();
    let e = format!(
        "{:#}",
        enigma_models::gguf::import_file(&dir.path().join("split-00001-of-00003.gguf"))
            .unwrap_err()
    );
    assert!(e.contains("split-00003-of-00003.gguf"), "{e}");
    let e = format!(
        "{:#}",
        enigma_models::gguf::import_file(&dir.path().join("big-endian.gguf")).unwrap_err()
    );
    assert!(e.contains("big-endian") && !e.contains('\n'), "{e}");
}
