//! Helpers shared by the benches: deterministic data and the real shapes the speed goals are stated on.

/// `(rows, cols)` of weight matrices in real models: stories15M's attention (288x288) and the 110M
/// shape's FFN (768x2048, 2048x768), and a 7B-class attention matrix (4096x4096).
pub const MATVEC_SHAPES: [(usize, usize); 4] = [(288, 288), (2048, 768), (768, 2048), (4096, 4096)];

/// Deterministic pseudo-random values in [-1, 1), so runs compare like with like.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    enigma_testkit::XorShift::new(seed).fill(n, -1.0, 1.0)
}
