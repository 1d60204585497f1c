//! `enigma bench` names a model's dtype after its weight matrices: a quantized model says so even when an
//! f32 embedding holds more of its bytes, and a model whose matrices differ says "mixed".

use enigma_core::kernels::DType;
use enigma_eval::report::{WeightDtypes, WEIGHT_MATRICES};
use enigma_runtime::quantize::{encode, params_f32, requantize, tokenizer_data};
use enigma_runtime::writer::ModelWriter;
use enigma_runtime::{Backend, ModelFile};

fn builtin() -> ModelFile {
    ModelFile::from_bytes(enigma_models::DEFAULT_MODEL, "built-in")
        .expect("the built-in model loads")
}

/// The built-in model rewritten with each tensor stored as `dtype_of(name)` says.
fn rewritten(dtype_of: impl Fn(&str) -> DType) -> Vec<u8> {
    let builtin = builtin();
    let file = builtin.parse().expect("parses");
    let config = *file.config();
    let params = params_f32(&file).expect("params");
    let tok = enigma_core::Tokenizer::from_file(&file).expect("tokenizer");
    let mut w = ModelWriter::new(config, tokenizer_data(&tok));
    let mut at = 0usize;
    for spec in enigma_core::ParamLayout::new(&config).iter() {
        let n = spec.numel() as usize;
        let dtype = if spec.is_norm() {
            DType::F32
        } else {
            dtype_of(spec.name)
        };
        let bytes = encode(dtype, &params[at..at + n]).expect("encode");
        w.tensor(spec.name, dtype, &spec.shape[..spec.ndim()], bytes);
        at += n;
    }
    w.to_bytes().expect("write")
}

fn dtypes_of(bytes: &[u8]) -> WeightDtypes {
    let file = ModelFile::from_bytes(bytes, "test model").expect("valid");
    let backend = Backend::cpu(Some(1)).expect("cpu");
    let model = file.model(backend.kernels()).expect("loads");
    WeightDtypes::of(&model.file)
}

#[test]
fn a_requantized_q8_0_model_reports_q8_0() {
    let (bytes, kept) =
        requantize(&builtin().parse().expect("parses"), DType::Q8_0).expect("requantize");
    assert!(kept.is_empty(), "{kept:?} stayed f32");
    let d = dtypes_of(&bytes);
    assert_eq!(d.single(), Some(DType::Q8_0));
    assert_eq!(d.to_string(), "q8_0");
}

#[test]
fn an_f32_embedding_larger_than_the_quantized_matrices_does_not_make_the_model_f32() {
    // q4_0 matrices: the built-in model's f32 embedding (4096 x 256) then holds more bytes than all of them.
    let bytes = rewritten(|name| {
        if WEIGHT_MATRICES.contains(&name) {
            DType::Q4_0
        } else {
            DType::F32
        }
    });
    // The case the old rule (the dtype with the most bytes) got wrong.
    let owned = ModelFile::from_bytes(&bytes, "test model").expect("valid");
    let file = owned.parse().expect("parses");
    let bytes_in = |d: DType| -> usize {
        file.tensors()
            .filter(|t| t.dtype == d && !t.name.starts_with("tokenizer."))
            .map(|t| t.bytes.len())
            .sum()
    };
    assert!(bytes_in(DType::F32) > bytes_in(DType::Q4_0));
    assert_eq!(dtypes_of(&bytes).to_string(), "q4_0");
}

#[test]
fn matrices_in_different_dtypes_are_reported_as_mixed() {
    // As stories260K's q8_0 import does with w2, whose rows of 172 are not whole blocks of 32.
    let bytes = rewritten(|name| {
        if name == "w2" {
            DType::F32
        } else {
            DType::Q8_0
        }
    });
    let d = dtypes_of(&bytes);
    assert_eq!(d.single(), None);
    assert_eq!(
        d.to_string(),
        "mixed (q8_0: wq, wk, wv, wo, w1, w3; f32: w2)"
    );
}
