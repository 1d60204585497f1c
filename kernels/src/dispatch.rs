//! The table of kernels for one CPU tier, filled once at start (tract-linalg's "plug" design).

use crate::{generic, WeightView};

/// A CPU tier: a set of instruction-set extensions a table of kernels is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Generic,
}

impl Tier {
    pub const ALL: [Tier; 1] = [Tier::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Generic => "generic",
        }
    }

    pub fn from_name(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether this CPU can run the tier (always true for `generic`).
    pub fn supported(self) -> bool {
        match self {
            Tier::Generic => true,
        }
    }
}

/// Why a requested tier cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierError {
    Unknown,
    Unsupported(Tier),
}

impl core::fmt::Display for TierError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TierError::Unknown => {
                f.write_str("unknown kernel tier (known: ")?;
                for (i, t) in Tier::ALL.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(t.name())?;
                }
                f.write_str(")")
            }
            TierError::Unsupported(t) => write!(f, "this CPU cannot run the {} kernels", t.name()),
        }
    }
}

/// One function per op. Shapes are those of the matching functions in [`generic`].
pub struct Kernels {
    pub tier: Tier,
    /// `out (n) = w (n, d) · x (d)`
    pub matvec_f32: fn(out: &mut [f32], w: &[f32], x: &[f32]),
    /// `out (t, n) = x (t, d) · w (n, d)ᵀ`
    pub matmul_f32: fn(out: &mut [f32], w: &[f32], x: &[f32], t: usize),
    /// `out (d) = weight (d) * x (d) / rms(x)`
    pub rmsnorm: fn(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32),
    /// in-place softmax of `x (n)`
    pub softmax: fn(x: &mut [f32]),
    /// rotate `x (n_heads, head_size)` by `cos_sin (head_size / 2, 2)`
    pub rope: fn(x: &mut [f32], cos_sin: &[f32]),
    /// `a (n) = silu(a) * b (n)`
    pub silu_mul: fn(a: &mut [f32], b: &[f32]),
    /// `scores (t) = keys (t, hs) · q (hs) * scale`
    pub attn_scores: fn(scores: &mut [f32], q: &[f32], keys: &[f32], scale: f32),
    /// `out (hs) = probs (t) · values (t, hs)`
    pub attn_accum: fn(out: &mut [f32], probs: &[f32], values: &[f32]),
    /// `acc (n) += x (n)`
    pub add: fn(acc: &mut [f32], x: &[f32]),
}

impl Kernels {
    /// `out (n) = w (n, d) · x (d)` for any weight dtype.
    pub fn matvec(&self, out: &mut [f32], w: WeightView<'_>, x: &[f32]) {
        match w {
            WeightView::F32 { data, .. } => (self.matvec_f32)(out, data, x),
        }
    }

    /// `out (t, n) = x (t, d) · w (n, d)ᵀ` for any weight dtype.
    pub fn matmul(&self, out: &mut [f32], w: WeightView<'_>, x: &[f32], t: usize) {
        match w {
            WeightView::F32 { data, .. } => (self.matmul_f32)(out, data, x, t),
        }
    }
}

static GENERIC: Kernels = Kernels {
    tier: Tier::Generic,
    matvec_f32: generic::matvec_f32,
    matmul_f32: generic::matmul_f32,
    rmsnorm: generic::rmsnorm,
    softmax: generic::softmax,
    rope: generic::rope,
    silu_mul: generic::silu_mul,
    attn_scores: generic::attn_scores,
    attn_accum: generic::attn_accum,
    add: generic::add,
};

/// The table of one tier, if this CPU supports it. Tests use this to run every tier the CPU has.
pub fn kernels_for(tier: Tier) -> Result<&'static Kernels, TierError> {
    if !tier.supported() {
        return Err(TierError::Unsupported(tier));
    }
    Ok(match tier {
        Tier::Generic => &GENERIC,
    })
}

/// The best tier for this CPU, or the one named by `ENIGMA_KERNELS` when std is on.
///
/// An unknown or unsupported `ENIGMA_KERNELS` value is an error here; [`kernels`] never fails.
#[cfg(feature = "std")]
pub fn kernels_from_env() -> Result<&'static Kernels, TierError> {
    match std::env::var("ENIGMA_KERNELS") {
        Ok(name) if !name.is_empty() => {
            kernels_for(Tier::from_name(&name).ok_or(TierError::Unknown)?)
        }
        _ => Ok(best()),
    }
}

#[cfg(feature = "std")]

fn best() -> &'static Kernels {
    Tier::ALL
        .into_iter()
        .rev()
        .find_map(|t| kernels_for(t).ok())
        .unwrap_or(&GENERIC)
}

/// The table the engine uses: the best supported tier (honouring a valid `ENIGMA_KERNELS` on std).
pub fn kernels() -> &'static Kernels {
    #[cfg(feature = "std")]
    {
        static CHOSEN: std::sync::OnceLock<&'static Kernels> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| kernels_from_env().unwrap_or_else(|_| best()))
    }
    #[cfg(not(feature = "std"))]
    {
        best()
    }
}
