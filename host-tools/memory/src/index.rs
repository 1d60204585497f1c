//! The vectors of one (embedding model, dimension) pair in memory, searched exactly while there are few
//! and through an HNSW graph beyond [`EXACT_LIMIT`].

use crate::error::Error;
use crate::hnsw::{Hnsw, Params, Visited};
use enigma_kernels::Kernels;

/// Up to this many vectors a query reads them all (one SIMD matvec, a few milliseconds at 384 wide): exact
/// and faster than any graph at that size. Beyond it the HNSW graph answers.
pub const EXACT_LIMIT: usize = 20_000;

/// Rows per matvec call in exact search: the scores of one block stay in cache.
const BLOCK_ROWS: usize = 4096;

/// `v` scaled to unit length; a vector of another width, with a non-finite value, or of length zero is
/// refused (its cosine with anything is undefined).
pub fn normalized(model: &str, dim: usize, v: &[f32]) -> Result<Vec<f32>, Error> {
    if v.len() != dim {
        return Err(Error::DimensionMismatch {
            model: model.to_string(),
            expected: dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::Invalid("a vector holds NaN or infinity".into()));
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(Error::Invalid(
            "a zero vector has no direction to search by".into(),
        ));
    }
    Ok(v.iter().map(|x| x / norm).collect())
}

/// The `n` best of `(row, score)` pairs, best first (ties: lower row first).
fn top(mut scored: Vec<(u32, f32)>, n: usize) -> Vec<(u32, f32)> {
    let better = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if scored.len() > n && n > 0 {
        scored.select_nth_unstable_by(n - 1, better);
    }
    scored.truncate(n);
    scored.sort_unstable_by(better);
    scored
}

/// The `n` rows of `data` (`(rows, dim)`, row-major) with the highest inner product with `q`, best first:
/// the whole matrix through the SIMD matvec kernel, a block of rows at a time.
pub fn exact_search(k: &Kernels, data: &[f32], dim: usize, q: &[f32], n: usize) -> Vec<(u32, f32)> {
    let rows = data.len() / dim;
    let mut scores = vec![0.0f32; rows];
    for (block, out) in data
        .chunks(BLOCK_ROWS * dim)
        .zip(scores.chunks_mut(BLOCK_ROWS))
    {
        (k.matvec_f32)(out, block, q);
    }
    top(
        scores
            .into_iter()
            .enumerate()
            .map(|(i, s)| (i as u32, s))
            .collect(),
        n,
    )
}

/// How a search is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Exact,
    Hnsw { ef: usize },
}

/// One index: row `i` of `data` is the vector of entry `ids[i]`.
pub struct VectorIndex {
    pub model: String,
    pub dim: usize,
    ids: Vec<i64>,
    // (rows, dim)
    data: Vec<f32>,
    graph: Option<Hnsw>,
    params: Params,
    exact_limit: usize,
    kernels: &'static Kernels,
}

impl VectorIndex {
    pub fn new(model: &str, dim: usize) -> Self {
        VectorIndex {
            model: model.to_string(),
            dim,
            ids: Vec::new(),
            data: Vec::new(),
            graph: None,
            params: Params::default(),
            exact_limit: EXACT_LIMIT,
            kernels: enigma_kernels::kernels(),
        }
    }

    /// The same index with another graph configuration and exact-search threshold (tests, benchmarks).
    pub fn with_config(mut self, params: Params, exact_limit: usize) -> Self {
        self.params = params;
        self.exact_limit = exact_limit;
        self
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    pub fn graph(&self) -> Option<&Hnsw> {
        self.graph.as_ref()
    }

    /// Appends an entry's vector (checked and normalised). Once past the exact limit, each one joins the graph
    /// (built over all of them the first time).
    pub fn push(&mut self, id: i64, v: &[f32]) -> Result<(), Error> {
        let v = normalized(&self.model, self.dim, v)?;
        self.push_unit(id, &v);
        Ok(())
    }

    /// As [`VectorIndex::push`] for a vector already stored normalised (read back from the database).
    pub(crate) fn push_unit(&mut self, id: i64, v: &[f32]) {
        self.ids.push(id);
        self.data.extend_from_slice(v);
        if let Some(g) = &mut self.graph {
            g.insert(self.kernels, &self.data, &mut Visited::default());
        }
    }

    /// Whether queries now need the graph, and it is not built.
    pub fn needs_graph(&self) -> bool {
        self.graph.is_none() && self.len() > self.exact_limit
    }

    /// Builds the graph over every vector (needed past the exact limit).
    pub fn build_graph(&mut self) {
        let mut g = Hnsw::new(self.dim, self.params);
        let mut visited = Visited::default();
        for _ in 0..self.len() {
            g.insert(self.kernels, &self.data, &mut visited);
        }
        self.graph = Some(g);
    }

    /// Takes a graph read back from storage when it matches these vectors; `Err` says why not (rebuild).
    pub fn adopt_graph(&mut self, bytes: &[u8]) -> Result<(), String> {
        let g = Hnsw::from_bytes(bytes, self.dim, self.len())?;
        if g.params() != self.params {
            return Err("built with other settings".into());
        }
        self.graph = Some(g);
        Ok(())
    }

    /// The method a query of `n` results takes now.
    pub fn method(&self, n: usize) -> Method {
        match &self.graph {
            Some(_) if self.len() > self.exact_limit => Method::Hnsw { ef: default_ef(n) },
            _ => Method::Exact,
        }
    }

    /// The `n` entries nearest `q` by cosine, best first, as (entry id, cosine).
    pub fn search(&self, q: &[f32], n: usize) -> Result<Vec<(i64, f32)>, Error> {
        self.search_with(q, n, self.method(n))
    }

    /// As [`VectorIndex::search`], answered by `method` (a graph search with no graph built is exact).
    pub fn search_with(
        &self,
        q: &[f32],
        n: usize,
        method: Method,
    ) -> Result<Vec<(i64, f32)>, Error> {
        let q = normalized(&self.model, self.dim, q)?;
        let mut visited = Visited::default();
        let rows = match (&self.graph, method) {
            (Some(g), Method::Hnsw { ef }) => {
                g.search(self.kernels, &self.data, &q, n, ef, &mut visited)
            }
            _ => exact_search(self.kernels, &self.data, self.dim, &q, n),
        };
        Ok(rows
            .into_iter()
            .map(|(r, s)| (self.ids[r as usize], s))
            .collect())
    }

    /// Row numbers rather than ids, reusing `visited` across queries (the recall test and benchmark).
    pub fn search_rows(
        &self,
        q: &[f32],
        n: usize,
        method: Method,
        visited: &mut Visited,
    ) -> Vec<(u32, f32)> {
        match (&self.graph, method) {
            (Some(g), Method::Hnsw { ef }) => g.search(self.kernels, &self.data, q, n, ef, visited),
            _ => exact_search(self.kernels, &self.data, self.dim, q, n),
        }
    }
}

/// The search breadth that keeps recall@10 at 0.95 or more on hard (random, 384-wide) data in our tests;
/// wider for more results.
pub fn default_ef(n: usize) -> usize {
    (n * 8).max(160)
}
