//! What a run shows and leaves behind: a progress bar (step, loss, lr, tokens/s, ETA), `train_log.jsonl`
//! (one JSON object per step) and the loss plot `loss.svg` (train and validation loss).

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const LOG_FILE: &str = "train_log.jsonl";
pub const PLOT_FILE: &str = "loss.svg";

/// One line of `train_log.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    /// 1-based: the step just taken.
    pub step: u64,
    /// Mean training loss of the step's batches (nats per token).
    pub loss: f64,
    pub lr: f32,
    pub tokens_per_s: f64,
    pub grad_norm: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
}

pub struct Progress {
    bar: ProgressBar,
    log: std::fs::File,
    log_path: PathBuf,
    entries: Vec<LogEntry>,
}

impl Progress {
    /// Opens the log in `dir`, keeping the entries of steps up to `resume_step` (a resumed run) and dropping
    /// any after it (steps the interrupted run took after its last checkpoint).
    pub fn new(
        dir: &Path,
        start: u64,
        total: u64,
        resume_step: Option<u64>,
        quiet: bool,
    ) -> Result<Progress> {
        let log_path = dir.join(LOG_FILE);
        let mut entries = Vec::new();
        if let Some(upto) = resume_step {
            if let Ok(text) = std::fs::read_to_string(&log_path) {
                entries = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<LogEntry>(l).ok())
                    .filter(|e| e.step <= upto)
                    .collect();
            }
        }
        let mut text = String::new();
        for e in &entries {
            text.push_str(&serde_json::to_string(e)?);
            text.push('\n');
        }
        // Atomically: a crash here must not lose the entries a resumed run keeps.
        enigma_runtime::fsutil::atomic_write(&log_path, text.as_bytes())?;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let bar = ProgressBar::new(total);
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start);
        Ok(Progress {
            bar,
            log,
            log_path,
            entries,
        })
    }

    pub fn record(&mut self, e: LogEntry) -> Result<()> {
        let line = serde_json::to_string(&e)?;
        writeln!(self.log, "{line}")
            .with_context(|| format!("cannot write {}", self.log_path.display()))?;
        self.bar.set_position(e.step);
        self.bar.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            e.loss, e.lr, e.tokens_per_s
        ));
        if let Some(v) = e.val_loss {
            self.println(&format!(
                "step {}: train loss {:.4}, val loss {v:.4}",
                e.step, e.loss
            ));
        }
        self.entries.push(e);
        Ok(())
    }

    /// A line above the bar (or on stderr when the bar is hidden).
    pub fn println(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Draws train loss (line) and validation loss (line with points) against the step, as SVG.
pub fn plot(path: &Path, entries: &[LogEntry]) -> Result<()> {
    use plotters::prelude::*;
    let train: Vec<(f64, f64)> = entries.iter().map(|e| (e.step as f64, e.loss)).collect();
    let val: Vec<(f64, f64)> = entries
        .iter()
        .filter_map(|e| e.val_loss.map(|v| (e.step as f64, v)))
        .collect();
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.iter().map(|p| p.0).fold(1.0, f64::max);
    let all = train
        .iter()
        .chain(&val)
        .map(|p| p.1)
        .filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let pad = (hi - lo) * 0.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("plot: {e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .caption("loss (nats/token)", ("sans-serif", 20))
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..max_step, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(train, &BLUE))
            .map_err(|e| err(&e))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.clone(), &RED))
                .map_err(|e| err(&e))?
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(enigma_runtime::fsutil::atomic_write(path, svg.as_bytes())?)
}
