use core::fmt;

/// A short copy of a name from a file, for error messages (long names are cut, never an error themselves).
pub type Name = heapless::String<48>;

pub(crate) fn name(s: &str) -> Name {
    let mut out = Name::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// Everything that can go wrong in the core. Each variant prints as one line that says what and where.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    Empty,
    Truncated {
        needed: u64,
        len: u64,
    },
    BadMagic([u8; 4]),
    UnsupportedVersion {
        found: u32,
        supported: u32,
    },
    BigEndianHost,
    HeaderChecksum {
        expected: u32,
        found: u32,
    },
    HeaderCorrupt,
    DataChecksum {
        expected: u32,
        found: u32,
    },
    BufferMisaligned,
    TensorOutOfBounds {
        name: Name,
        offset: u64,
        len: u64,
        file_len: u64,
    },
    TensorMisaligned {
        name: Name,
        offset: u64,
    },
    TensorOverlap {
        name: Name,
    },
    TensorLength {
        name: Name,
        expected: u64,
        found: u64,
    },
    UnknownDType {
        name: Name,
        code: u8,
    },
    UnsupportedDType {
        name: Name,
        dtype: &'static str,
    },
    MissingTensor {
        name: &'static str,
    },
    ShapeMismatch {
        name: &'static str,
        expected: [u64; 4],
        found: [u64; 4],
    },
    BadConfig(&'static str),
    BadTokenizer(&'static str),
    TokenOutOfRange {
        token: u32,
        vocab: u32,
    },
    Unencodable {
        byte: u8,
    },
    EmptyPrompt,
    PromptTooLong {
        tokens: usize,
        max: usize,
    },
    /// Refused before encoding: `bytes` of text make at least `tokens` tokens.
    PromptBytesTooLong {
        bytes: usize,
        tokens: usize,
        max: usize,
    },
    ContextFull {
        max: usize,
    },
    BufferTooSmall {
        what: &'static str,
        needed: usize,
        found: usize,
    },
    /// The model computed a NaN or infinite logit: its weights are not finite, or so large that the
    /// activations overflowed.
    NonFiniteLogit {
        token: u32,
        value: f32,
    },
    /// A batch step's rows do not fit the paged KV cache they name (`what` says how).
    BadBlockTable(&'static str),
    /// A tokenizer is larger than every loader accepts (`what` names the limit).
    TokenizerLimit {
        what: &'static str,
        found: u64,
        limit: u64,
    },
}

fn dims(f: &mut fmt::Formatter<'_>, d: &[u64; 4]) -> fmt::Result {
    f.write_str("[")?;
    let mut first = true;
    for v in d.iter().filter(|v| **v != 0) {
        if !first {
            f.write_str(", ")?;
        }
        first = false;
        write!(f, "{v}")?;
    }
    f.write_str("]")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Empty => f.write_str("the model file is empty"),
            Truncated { needed, len } => {
                write!(f, "the model file is truncated: {len} bytes, at least {needed} needed")
            }
            BadMagic(m) => write!(f, "not an .enigma file: magic bytes are {m:02x?}, expected \"ENGM\""),
            UnsupportedVersion { found, supported } => write!(
                f,
                "the model file is format version {found}; this build reads version {supported}"
            ),
            BigEndianHost => f.write_str(".enigma files are little-endian; this host is big-endian"),
            HeaderChecksum { expected, found } => write!(
                f,
                "the model header is corrupt: CRC32 {found:#010x}, header says {expected:#010x}"
            ),
            HeaderCorrupt => f.write_str("the model header cannot be decoded (corrupt or from another tool)"),
            DataChecksum { expected, found } => write!(
                f,
                "the model's tensor data is corrupt: CRC32 {found:#010x}, header says {expected:#010x}"
            ),
            BufferMisaligned => f.write_str("the model bytes must start on a 64-byte boundary"),
            TensorOutOfBounds { name, offset, len, file_len } => write!(
                f,
                "tensor '{name}' (offset {offset}, {len} bytes) points past the end of the file ({file_len} bytes)"
            ),
            TensorMisaligned { name, offset } => {
                write!(f, "tensor '{name}' starts at offset {offset}, not a multiple of 64")
            }
            TensorOverlap { name } => {
                write!(f, "tensor '{name}' overlaps the header or the tensor before it")
            }
            TensorLength { name, expected, found } => write!(
                f,
                "tensor '{name}' has {found} bytes but its dtype and shape need {expected}"
            ),
            UnknownDType { name, code } => write!(f, "tensor '{name}' has unknown dtype code {code}"),
            UnsupportedDType { name, dtype } => {
                write!(f, "tensor '{name}' is {dtype}, which this build cannot compute with")
            }
            MissingTensor { name } => write!(f, "the model file has no tensor '{name}'"),
            ShapeMismatch { name, expected, found } => {
                write!(f, "tensor '{name}' has shape ")?;
                dims(f, found)?;
                f.write_str(" but the config needs ")?;
                dims(f, expected)
            }
            BadConfig(why) => write!(f, "invalid model config: {why}"),
            BadTokenizer(why) => write!(f, "invalid tokenizer: {why}"),
            TokenOutOfRange { token, vocab } => {
                write!(f, "token id {token} is outside the vocabulary of {vocab}")
            }
            Unencodable { byte } => write!(
                f,
                "the tokenizer has no token for byte {byte:#04x} and no byte fallback"
            ),
            EmptyPrompt => f.write_str("the prompt is empty and there is no context to continue"),
            PromptTooLong { tokens, max } => write!(
                f,
                "the prompt is {tokens} tokens but the model's context holds {max}"
            ),
            PromptBytesTooLong { bytes, tokens, max } => write!(
                f,
                "the prompt is {bytes} bytes, at least {tokens} tokens, but the model's context holds {max}"
            ),
            ContextFull { max } => write!(f, "the context is full ({max} tokens)"),
            BufferTooSmall { what, needed, found } => {
                write!(f, "the {what} buffer holds {found} elements, {needed} needed")
            }
            NonFiniteLogit { token, value } => write!(
                f,
                "the model computed a logit of {value} (token {token}): its weights are not finite or so large that its activations overflow; generation stopped"
            ),
            BadBlockTable(why) => write!(f, "invalid batch for the paged KV cache: {why}"),
            TokenizerLimit { what, found, limit } => write!(
                f,
                "the tokenizer exceeds the limit on {what}: {found}, at most {limit}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
