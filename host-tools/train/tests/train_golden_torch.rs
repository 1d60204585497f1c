//! Golden test against PyTorch: logits, loss, every parameter's gradient after one backward pass, and the
//! losses of 10 AdamW steps, for the tiny model of `scripts/torch_reference.py` (its docstring says how to
//! regenerate `fixtures/torch_tiny.bin`; the reference is computed in float64, the trainer in f32).

use enigma_core::config::{Config, ParamLayout};
use enigma_core::kernels::kernels;
use enigma_train::adamw::{AdamW, AdamWConfig, Schedule};
use enigma_train::{Batch, Model};
use std::collections::HashMap;

struct Fixture(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Fixture {
    fn load() -> Fixture {
        let b = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/torch_tiny.bin"
        ))
        .unwrap();
        assert_eq!(&b[..8], b"ENGMFIX1");
        let count = u32::from_le_bytes(b[8..12].try_into().unwrap());
        let mut map = HashMap::new();
        let mut at2 = 12;
        for _ in 0..count {
            let rd = |at: &mut usize| {
                let v = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap()) as usize;
                *at += 4;
                v
            };
            let n = rd(&mut at2);
            let name = String::from_utf8(b[at2..at2 + n].to_vec()).unwrap();
            at2 += n;
            let nd = rd(&mut at2);
            let dims: Vec<usize> = (0..nd).map(|_| rd(&mut at2)).collect();
            let numel: usize = dims.iter().product();
            let data = b[at2..at2 + 4 * numel]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            at2 += 4 * numel;
            map.insert(name, (dims, data));
        }
        assert_eq!(at2, b.len());
        Fixture(map)
    }

    fn get(&self, name: &str) -> &[f32] {
        &self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
            .1
    }

    fn ints(&self, name: &str) -> Vec<usize> {
        self.get(name).iter().map(|&v| v as usize).collect()
    }
}

fn check(label: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let mut worst = 0.0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{label}[{i}]: trainer {g} vs torch {w}"
        );
        worst = worst.max(err);
    }
    eprintln!("{label:<28} ok (largest difference {worst:.2e})");
}

#[test]
fn logits_loss_gradients_and_adamw_steps_match_pytorch() {
    let fx = Fixture::load();
    let cfg = fx.ints("config");
    let hy = fx.get("hyper");
    let [dim, hidden, layers, heads, kv, vocab, seq, b, t, steps, warmup] = cfg[..] else {
        panic!("config")
    };
    let c = Config {
        dim: dim as u32,
        hidden_dim: hidden as u32,
        n_layers: layers as u32,
        n_heads: heads as u32,
        n_kv_heads: kv as u32,
        vocab_size: vocab as u32,
        seq_len: seq as u32,
        rope_theta: hy[0],
        norm_eps: hy[1],
        tied_classifier: true,
    };
    let model = Model::new(c, kernels()).unwrap();
    let layout = ParamLayout::new(&c);
    let mut params = Vec::new();
    for spec in layout.iter() {
        params.extend_from_slice(fx.get(&format!("param.{}", spec.name)));
    }
    assert_eq!(params.len(), model.num_params());
    let batch = Batch {
        b,
        t,
        tokens: fx.ints("tokens").iter().map(|&v| v as u32).collect(),
        targets: fx.ints("targets").iter().map(|&v| v as u32).collect(),
        mask: fx.ints("mask").iter().map(|&v| v == 1).collect(),
    };

    // Tolerances: f32 against a float64 reference; logits and loss are sums of ~100 products of O(1) values.
    let mut acts = model.acts(b, t).unwrap();
    model.forward(&params, &mut acts, &batch.tokens).unwrap();
    check(
        "logits",
        &model.logits(&params, &acts),
        fx.get("logits"),
        1e-4,
        1e-4,
    );
    let count = batch.count();
    let mut grads = vec![0.0; params.len()];
    let (sum, n) = model
        .forward_backward(&params, &mut grads, &mut acts, &batch, 1.0 / count as f32)
        .unwrap();
    assert_eq!(n, count);
    check(
        "loss",
        &[(sum / n as f64) as f32],
        fx.get("loss"),
        1e-5,
        1e-5,
    );
    let mut at = 0;
    for spec in layout.iter() {
        let k = spec.numel() as usize;
        check(
            &format!("grad.{}", spec.name),
            &grads[at..at + k],
            fx.get(&format!("grad.{}", spec.name)),
            1e-5,
            1e-3,
        );
        at += k;
    }

    // 10 AdamW steps on the same batch, with the same schedule, clipping and decay.
    let sched = Schedule {
        lr: hy[2],
        min_lr: hy[3],
        warmup: warmup as u64,
        total: steps as u64,
    };
    let mut adam = AdamW::new(
        &c,
        AdamWConfig {
            beta1: hy[4],
            beta2: hy[5],
            eps: hy[6],
            weight_decay: hy[7],
            clip: hy[8],
        },
    );
    let mut losses = Vec::new();
    for step in 0..steps as u64 {
        grads.fill(0.0);
        let (sum, n) = model
            .forward_backward(&params, &mut grads, &mut acts, &batch, 1.0 / count as f32)
            .unwrap();
        losses.push((sum / n as f64) as f32);
        adam.step(&mut params, &mut grads, sched.lr(step));
    }
    // The trajectory may drift by rounding amplified over steps; 1e-4 of a loss of O(1) is far below any bug.
    check(
        "adamw losses (10 steps)",
        &losses,
        fx.get("adamw_losses"),
        2e-4,
        2e-4,
    );
    model.forward(&params, &mut acts, &batch.tokens).unwrap();
    let (sum, n) = model.loss(&params, &mut acts, &batch);
    check(
        "loss after 10 steps",
        &[(sum / n as f64) as f32],
        fx.get("adamw_final_loss"),
        2e-4,
        2e-4,
    );
}
