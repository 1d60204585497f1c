//! A hierarchical navigable small world graph (Malkov & Yashunin, arXiv:1603.09320) over unit vectors,
//! ranked by inner product (cosine, since every vector is L2-normalised).
//!
//! Written here rather than taken from a crate so that every similarity is one call of the kernels'
//! dispatched SIMD `matvec_f32` (the same dot product exact search uses), and so that the graph is a plain
//! byte image of our own, checked (magic, version, sizes, CRC32, every link in range) before use: a graph that
//! fails the check is rebuilt from the vectors, never trusted.

use enigma_kernels::Kernels;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Graph settings. `m` links per node on the upper layers, `2m` on layer 0 (the paper's `M_max0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub m: usize,
    pub ef_construction: usize,
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            m: 24,
            ef_construction: 128,
            seed: 0x5eed_1e55,
        }
    }
}

/// A candidate: similarity to the query and node number. Ordered by similarity, ties by node.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Near {
    sim: f32,
    node: u32,
}

impl Eq for Near {}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sim
            .total_cmp(&other.sim)
            .then_with(|| other.node.cmp(&self.node))
    }
}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The reverse order, so a `BinaryHeap` pops the least similar first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Far(std::cmp::Reverse<Near>);

/// Which nodes a search has seen: a stamp per node, so a new search costs nothing to clear.
#[derive(Default)]
pub struct Visited {
    stamp: Vec<u32>,
    now: u32,
}

impl Visited {
    fn start(&mut self, n: usize) {
        if self.stamp.len() < n {
            self.stamp.resize(n, 0);
        }
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.stamp.iter_mut().for_each(|s| *s = 0);
            self.now = 1;
        }
    }

    /// `true` the first time `node` is seen in this search.
    fn first(&mut self, node: u32) -> bool {
        let s = &mut self.stamp[node as usize];
        let fresh = *s != self.now;
        *s = self.now;
        fresh
    }
}

/// The graph; the vectors live with the caller (`(n, dim)` row-major) and are passed to every call.
#[derive(Clone, Debug, PartialEq)]
pub struct Hnsw {
    params: Params,
    dim: usize,
    /// Layer 0 links, `2m` slots per node; `links0_len[i]` of node `i`'s are used.
    links0: Vec<u32>,
    links0_len: Vec<u8>,
    /// Top layer of each node.
    level: Vec<u8>,
    /// Layers 1..=level of each node, `m` slots per layer, then the count of each layer's used slots.
    upper: Vec<Vec<u32>>,
    upper_len: Vec<Vec<u8>>,
    entry: Option<u32>,
    max_level: u8,
    rng: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The highest layer the paper's level draw may give; 16 holds far more nodes than memory does.
const MAX_LEVEL: u8 = 16;

impl Hnsw {
    pub fn new(dim: usize, params: Params) -> Self {
        Hnsw {
            params,
            dim,
            links0: Vec::new(),
            links0_len: Vec::new(),
            level: Vec::new(),
            upper: Vec::new(),
            upper_len: Vec::new(),
            entry: None,
            max_level: 0,
            rng: params.seed,
        }
    }

    pub fn len(&self) -> usize {
        self.level.len()
    }

    pub fn is_empty(&self) -> bool {
        self.level.is_empty()
    }

    pub fn params(&self) -> Params {
        self.params
    }

    fn m0(&self) -> usize {
        2 * self.params.m
    }

    fn neighbours(&self, node: u32, layer: u8) -> &[u32] {
        let i = node as usize;
        if layer == 0 {
            let m0 = self.m0();
            &self.links0[i * m0..i * m0 + self.links0_len[i] as usize]
        } else {
            let m = self.params.m;
            let l = layer as usize - 1;
            &self.upper[i][l * m..l * m + self.upper_len[i][l] as usize]
        }
    }

    fn set_neighbours(&mut self, node: u32, layer: u8, links: &[u32]) {
        let i = node as usize;
        if layer == 0 {
            let m0 = self.m0();
            self.links0[i * m0..i * m0 + links.len()].copy_from_slice(links);
            self.links0_len[i] = links.len() as u8;
        } else {
            let m = self.params.m;
            let l = layer as usize - 1;
            self.upper[i][l * m..l * m + links.len()].copy_from_slice(links);
            self.upper_len[i][l] = links.len() as u8;
        }
    }

    fn random_level(&mut self) -> u8 {
        let ml = 1.0 / (self.params.m.max(2) as f64).ln();
        // A uniform draw in (0, 1]: never 0, whose log is infinite.
        let u = ((splitmix(&mut self.rng) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * ml) as u64).min(MAX_LEVEL as u64) as u8
    }

    /// Inserts the next vector, `data[len * dim..]`: nodes are numbered in the order they come.
    pub fn insert(&mut self, k: &Kernels, data: &[f32], visited: &mut Visited) {
        let node = self.len() as u32;
        let level = self.random_level();
        let (m, m0) = (self.params.m, self.m0());
        self.links0.resize(self.links0.len() + m0, 0);
        self.links0_len.push(0);
        self.level.push(level);
        self.upper.push(vec![0; m * level as usize]);
        self.upper_len.push(vec![0; level as usize]);
        let Some(ep) = self.entry else {
            self.entry = Some(node);
            self.max_level = level;
            return;
        };
        let q = row(data, self.dim, node);
        let mut best = Near {
            sim: dot(k, q, row(data, self.dim, ep)),
            node: ep,
        };
        for layer in (level + 1..=self.max_level).rev() {
            best = self.greedy(k, data, q, best, layer);
        }
        let mut entries = vec![best];
        for layer in (0..=level.min(self.max_level)).rev() {
            let found = self.search_layer(
                k,
                data,
                q,
                &entries,
                self.params.ef_construction,
                layer,
                visited,
            );
            let cap = if layer == 0 { m0 } else { m };
            let chosen = self.select(k, data, &found, self.params.m);
            let ids: Vec<u32> = chosen.iter().map(|n| n.node).collect();
            self.set_neighbours(node, layer, &ids);
            for &nb in &ids {
                self.link(k, data, nb, node, layer, cap);
            }
            entries = found;
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(node);
        }
    }

    /// Adds `to` to `from`'s links on `layer`; a full list keeps the heuristic's pick of old and new.
    fn link(&mut self, k: &Kernels, data: &[f32], from: u32, to: u32, layer: u8, cap: usize) {
        let current = self.neighbours(from, layer);
        if current.len() < cap {
            let mut v = current.to_vec();
            v.push(to);
            self.set_neighbours(from, layer, &v);
            return;
        }
        let base = row(data, self.dim, from);
        let mut cands: Vec<Near> = current
            .iter()
            .chain(std::iter::once(&to))
            .map(|&n| Near {
                sim: dot(k, base, row(data, self.dim, n)),
                node: n,
            })
            .collect();
        cands.sort_unstable_by(|a, b| b.cmp(a));
        let kept = self.select(k, data, &cands, cap);
        let ids: Vec<u32> = kept.iter().map(|n| n.node).collect();
        self.set_neighbours(from, layer, &ids);
    }

    /// The paper's neighbour heuristic (its algorithm 4): from `cands` (most similar first), keep one only
    /// when it is nearer the base than to every one kept, so links spread in every direction; then fill up
    /// with the best of the rest (as hnswlib's `keepPrunedConnections`), up to `cap`.
    fn select(&self, k: &Kernels, data: &[f32], cands: &[Near], cap: usize) -> Vec<Near> {
        let mut kept: Vec<Near> = Vec::with_capacity(cap);
        let mut pruned: Vec<Near> = Vec::new();
        for c in cands {
            if kept.len() >= cap {
                break;
            }
            let cv = row(data, self.dim, c.node);
            let diverse = kept
                .iter()
                .all(|r| dot(k, cv, row(data, self.dim, r.node)) < c.sim);
            if diverse {
                kept.push(*c);
            } else {
                pruned.push(*c);
            }
        }
        for p in pruned {
            if kept.len() >= cap {
                break;
            }
            kept.push(p);
        }
        kept
    }

    fn greedy(&self, k: &Kernels, data: &[f32], q: &[f32], mut best: Near, layer: u8) -> Near {
        loop {
            let mut moved = false;
            for &nb in self.neighbours(best.node, layer) {
                let sim = dot(k, q, row(data, self.dim, nb));
                if sim > best.sim {
                    best = Near { sim, node: nb };
                    moved = true;
                }
            }
            if !moved {
                return best;
            }
        }
    }

    /// The `ef` nodes most similar to `q` found on `layer` from `entries`, most similar first.
    #[allow(clippy::too_many_arguments)]
    fn search_layer(
        &self,
        k: &Kernels,
        data: &[f32],
        q: &[f32],
        entries: &[Near],
        ef: usize,
        layer: u8,
        visited: &mut Visited,
    ) -> Vec<Near> {
        visited.start(self.len());
        let mut cands: BinaryHeap<Near> = BinaryHeap::new();
        let mut found: BinaryHeap<Far> = BinaryHeap::new();
        for e in entries {
            if visited.first(e.node) {
                cands.push(*e);
                found.push(Far(std::cmp::Reverse(*e)));
            }
        }
        while found.len() > ef {
            found.pop();
        }
        while let Some(c) = cands.pop() {
            let worst = found.peek().map_or(f32::NEG_INFINITY, |f| f.0 .0.sim);
            if c.sim < worst && found.len() >= ef {
                break;
            }
            for &nb in self.neighbours(c.node, layer) {
                if !visited.first(nb) {
                    continue;
                }
                let sim = dot(k, q, row(data, self.dim, nb));
                let worst = found.peek().map_or(f32::NEG_INFINITY, |f| f.0 .0.sim);
                if found.len() < ef || sim > worst {
                    let n = Near { sim, node: nb };
                    cands.push(n);
                    found.push(Far(std::cmp::Reverse(n)));
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        let mut out: Vec<Near> = found.into_iter().map(|f| f.0 .0).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// The `n` nodes most similar to `q` (node, similarity), most similar first; `ef` (at least `n`) trades
    /// speed for recall.
    pub fn search(
        &self,
        k: &Kernels,
        data: &[f32],
        q: &[f32],
        n: usize,
        ef: usize,
        visited: &mut Visited,
    ) -> Vec<(u32, f32)> {
        let Some(ep) = self.entry else {
            return Vec::new();
        };
        let mut best = Near {
            sim: dot(k, q, row(data, self.dim, ep)),
            node: ep,
        };
        for layer in (1..=self.max_level).rev() {
            best = self.greedy(k, data, q, best, layer);
        }
        let mut found = self.search_layer(k, data, q, &[best], ef.max(n), 0, visited);
        found.truncate(n);
        found.into_iter().map(|c| (c.node, c.sim)).collect()
    }

    /// The graph as bytes (little-endian): magic, version, dim, params, counts, levels, links, CRC32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put(&mut out, VERSION as u64);
        put(&mut out, self.dim as u64);
        put(&mut out, self.params.m as u64);
        put(&mut out, self.params.ef_construction as u64);
        put(&mut out, self.params.seed);
        put(&mut out, self.rng);
        put(&mut out, self.len() as u64);
        put(&mut out, self.entry.map_or(u64::MAX, |e| e as u64));
        out.push(self.max_level);
        for i in 0..self.len() {
            out.push(self.level[i]);
            for layer in 0..=self.level[i] {
                let links = self.neighbours(i as u32, layer);
                out.push(links.len() as u8);
                for l in links {
                    out.extend_from_slice(&l.to_le_bytes());
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// A graph read back, checked whole: anything but a graph of exactly `nodes` nodes of width `dim`, with
    /// every link in range, is an error saying what is wrong (the caller rebuilds).
    pub fn from_bytes(bytes: &[u8], dim: usize, nodes: usize) -> Result<Hnsw, String> {
        let body_len = bytes
            .len()
            .checked_sub(4)
            .ok_or("shorter than its checksum")?;
        let (body, crc) = bytes.split_at(body_len);
        let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "no checksum")?);
        if crc32fast::hash(body) != crc {
            return Err("checksum mismatch".into());
        }
        let mut r = Reader { b: body, at: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not an HNSW graph".into());
        }
        let version = r.u64()?;
        if version != VERSION as u64 {
            return Err(format!("graph version {version}, expected {VERSION}"));
        }
        let gdim = r.u64()? as usize;
        if gdim != dim {
            return Err(format!("graph of dimension {gdim}, vectors of {dim}"));
        }
        let params = Params {
            m: r.u64()? as usize,
            ef_construction: r.u64()? as usize,
            seed: r.u64()?,
        };
        if !(2..=127).contains(&params.m) {
            return Err(format!("m = {} out of range", params.m));
        }
        let rng = r.u64()?;
        let n = r.u64()? as usize;
        if n != nodes {
            return Err(format!("graph of {n} nodes, index of {nodes} vectors"));
        }
        let entry = match r.u64()? {
            u64::MAX => None,
            e if (e as usize) < n => Some(e as u32),
            e => return Err(format!("entry point {e} out of range")),
        };
        if entry.is_none() != (n == 0) {
            return Err("entry point missing".into());
        }
        let mut g = Hnsw::new(dim, params);
        g.rng = rng;
        g.entry = entry;
        g.max_level = r.u8()?;
        if g.max_level > MAX_LEVEL {
            return Err("level out of range".into());
        }
        let (m, m0) = (params.m, 2 * params.m);
        g.links0 = vec![0; n * m0];
        g.links0_len = vec![0; n];
        for i in 0..n {
            let level = r.u8()?;
            if level > g.max_level {
                return Err(format!("node {i} above the top layer"));
            }
            g.level.push(level);
            g.upper.push(vec![0; m * level as usize]);
            g.upper_len.push(vec![0; level as usize]);
            for layer in 0..=level {
                let count = r.u8()? as usize;
                if count > if layer == 0 { m0 } else { m } {
                    return Err(format!("node {i} has too many links"));
                }
                let mut links = Vec::with_capacity(count);
                for _ in 0..count {
                    let l = r.u32()?;
                    if l as usize >= n {
                        return Err(format!("node {i} links to {l}, past the end"));
                    }
                    links.push(l);
                }
                g.set_neighbours(i as u32, layer, &links);
            }
        }
        if let Some(e) = entry {
            if g.level[e as usize] != g.max_level {
                return Err("entry point is not on the top layer".into());
            }
        }
        if r.at != body.len() {
            return Err("trailing bytes".into());
        }
        Ok(g)
    }
}

const MAGIC: &[u8; 8] = b"ENGMHNSW";
const VERSION: u32 = 1;

fn put(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or("truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

fn row(data: &[f32], dim: usize, node: u32) -> &[f32] {
    let i = node as usize * dim;
    &data[i..i + dim]
}

/// One inner product through the dispatched SIMD kernel (a matvec of one row).
pub fn dot(k: &Kernels, a: &[f32], b: &[f32]) -> f32 {
    let mut out = [0.0f32];
    (k.matvec_f32)(&mut out, a, b);
    out[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(n: usize, dim: usize) -> (Vec<f32>, Hnsw) {
        let mut state = 7u64;
        let data: Vec<f32> = (0..n * dim)
            .map(|_| (splitmix(&mut state) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        let params = Params {
            m: 4,
            ef_construction: 16,
            seed: 3,
        };
        let mut g = Hnsw::new(dim, params);
        let k = enigma_kernels::kernels();
        let mut visited = Visited::default();
        for _ in 0..n {
            g.insert(k, &data, &mut visited);
        }
        (data, g)
    }

    #[test]
    fn the_byte_image_reads_back_equal_and_every_damage_is_refused() {
        let (_, g) = graph(60, 8);
        let bytes = g.to_bytes();
        assert_eq!(Hnsw::from_bytes(&bytes, 8, 60).unwrap(), g);
        assert!(Hnsw::from_bytes(&bytes, 9, 60).is_err());
        assert!(Hnsw::from_bytes(&bytes, 8, 61).is_err());
        for cut in 0..bytes.len() {
            assert!(
                Hnsw::from_bytes(&bytes[..cut], 8, 60).is_err(),
                "cut at {cut}"
            );
        }
        // A link past the end, with a checksum that matches: caught by the range check, not trusted.
        let mut body = bytes[..bytes.len() - 4].to_vec();
        let last = body.len() - 4;
        body[last..].copy_from_slice(&1000u32.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let e = Hnsw::from_bytes(&body, 8, 60).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn a_wide_search_finds_what_exact_search_finds() {
        let (data, g) = graph(300, 16);
        let k = enigma_kernels::kernels();
        let mut visited = Visited::default();
        for q in data.chunks_exact(16).take(20) {
            let found = g.search(k, &data, q, 5, 300, &mut visited);
            let exact = crate::index::exact_search(k, &data, 16, q, 5);
            // The same rows; scores may differ in the last bit (the matvec sums 4-row tiles in another order).
            let rows = |v: &[(u32, f32)]| v.iter().map(|r| r.0).collect::<Vec<_>>();
            assert_eq!(rows(&found), rows(&exact));
        }
    }
}
