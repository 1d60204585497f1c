//! The flags of `enigma train` and `enigma tokenizer train`. A checkpoint stores [`TrainOptions`], so a resumed
//! run trains with exactly the settings it started with.

use super::data::DataFormat;
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The largest learning rate accepted without `--force`.
pub const MAX_SAFE_LR: f32 = 1e-3;
/// Data files with fewer lines in all are refused without `--allow-small-data`.
pub const MIN_LINES: usize = 1000;

/// The defaults of [`TrainOptions`], shared by its flags and [`TrainOptions::new`] so a run from the
/// command line and one from code (the training module) start from the same settings.
pub mod defaults {
    pub const PRESET: &str = "nano";
    pub const VOCAB_SIZE: usize = 8000;
    pub const BATCH_SIZE: usize = 8;
    pub const GRAD_ACCUM: usize = 1;
    pub const MIN_LR_RATIO: f32 = 0.1;
    pub const SEED: u64 = 1337;
    pub const VAL_SPLIT: f64 = 0.1;
    pub const EVAL_EVERY: u64 = 100;
    pub const EVAL_BATCHES: usize = 8;
    pub const CHECKPOINT_EVERY: u64 = 200;
    pub const QUANTIZE: &str = "f32";
}

#[derive(Args, Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainOptions {
    /// Model size (nano, micro, tiny, ...; see SPEC); ignored with --config or --init.
    #[arg(long, default_value = defaults::PRESET)]
    pub preset: String,
    /// A JSON model config (the fields of enigma_core::Config) instead of a preset.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Training data: plain text, conversations as JSONL ({"messages": [...]}) or Q:/A: pairs.
    /// Not needed with --resume, which continues with the run's own data.
    #[arg(long, required_unless_present = "resume", num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// How to read the data files (auto decides by extension and first line).
    #[arg(long, value_enum, default_value = "auto")]
    pub format: DataFormat,
    /// A tokenizer from `enigma tokenizer train`; without it one is trained on the data first.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of the tokenizer trained when none is given.
    #[arg(long, default_value_t = defaults::VOCAB_SIZE)]
    pub vocab_size: usize,
    /// Start from this model's weights and tokenizer (fine-tuning, e.g. into a chat model).
    #[arg(long, value_name = "MODEL.enigma")]
    pub init: Option<PathBuf>,
    /// The training folder: model.enigma, checkpoint.bin, tokenizer.json, train_log.jsonl, loss.svg.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Tokens per sequence (default: the model's context, at most 256).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Optimizer steps (default 1000, or what --epochs works out to). With --resume: a longer schedule, to
    /// continue a run that finished.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the training examples, instead of --steps.
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Micro-batches whose gradients add up to one step.
    #[arg(long, default_value_t = defaults::GRAD_ACCUM)]
    pub grad_accum: usize,
    /// Peak learning rate (default 1e-3 from scratch, 1e-4 with --init); above 1e-3 needs --force.
    #[arg(long)]
    pub lr: Option<f32>,
    /// The cosine schedule ends at this fraction of --lr.
    #[arg(long, default_value_t = defaults::MIN_LR_RATIO)]
    pub min_lr_ratio: f32,
    /// Linear warmup steps (default: a tenth of the steps, at most 100).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Seed of the initial weights and of the order of the batches (a resumed run keeps its own).
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Fraction of the data held out for validation.
    #[arg(long, default_value_t = defaults::VAL_SPLIT)]
    pub val_split: f64,
    /// Evaluate on the validation set every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = defaults::EVAL_EVERY)]
    pub eval_every: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = defaults::EVAL_BATCHES)]
    pub eval_batches: usize,
    /// Write a checkpoint every N steps (and at the end); 0 = only at the end.
    #[arg(long, default_value_t = defaults::CHECKPOINT_EVERY)]
    pub checkpoint_every: u64,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    #[serde(skip)]
    pub threads: Option<usize>,
    /// Accept data under 1000 lines (tests, experiments).
    #[arg(long)]
    pub allow_small_data: bool,
    /// Accept a learning rate above 1e-3.
    #[arg(long)]
    pub force: bool,
    /// Continue the run whose checkpoint is in --out, with the settings it was started with.
    #[arg(long)]
    #[serde(skip)]
    pub resume: bool,
    /// Stop (with a checkpoint) once this many steps of the schedule are done; --resume continues the run.
    #[arg(long, value_name = "STEP")]
    #[serde(skip)]
    pub stop_after: Option<u64>,
    /// Store the final model's matrices as this dtype (f32, f16, bf16, q8_0, q4_0).
    #[arg(long, default_value = defaults::QUANTIZE)]
    pub quantize: String,
    /// No progress bar (logs still go to train_log.jsonl).
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
}

impl TrainOptions {
    /// A run on `data` into the folder `out` with every other setting at its default, as the command
    /// line would have it.
    pub fn new(data: Vec<PathBuf>, out: PathBuf) -> Self {
        TrainOptions {
            preset: defaults::PRESET.into(),
            config: None,
            data,
            format: DataFormat::Auto,
            tokenizer: None,
            vocab_size: defaults::VOCAB_SIZE,
            init: None,
            out,
            batch_size: defaults::BATCH_SIZE,
            seq_len: None,
            steps: None,
            epochs: None,
            grad_accum: defaults::GRAD_ACCUM,
            lr: None,
            min_lr_ratio: defaults::MIN_LR_RATIO,
            warmup: None,
            seed: defaults::SEED,
            val_split: defaults::VAL_SPLIT,
            eval_every: defaults::EVAL_EVERY,
            eval_batches: defaults::EVAL_BATCHES,
            checkpoint_every: defaults::CHECKPOINT_EVERY,
            threads: None,
            allow_small_data: false,
            force: false,
            resume: false,
            stop_after: None,
            quantize: defaults::QUANTIZE.into(),
            quiet: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TrainOptions;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        options: TrainOptions,
    }

    #[test]
    fn new_has_the_defaults_of_the_command_line() {
        let parsed = Flags::try_parse_from(["train", "--data", "a.txt", "--out", "o"])
            .unwrap()
            .options;
        assert_eq!(parsed, TrainOptions::new(vec!["a.txt".into()], "o".into()));
    }
}

/// `enigma tokenizer ...`
#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (with BOS, EOS, PAD and chat markers) on text files.
    Train(TokenizerTrainArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TokenizerTrainArgs {
    /// Text, JSONL conversations or Q:/A: files.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// How to read the data files (auto decides by extension and first line).
    #[arg(long, value_enum, default_value = "auto")]
    pub format: DataFormat,
    /// Tokens in all: 256 bytes, 5 specials, and the merges.
    #[arg(long, default_value_t = 8000)]
    pub vocab_size: usize,
    /// The tokenizer file to write.
    #[arg(short, long)]
    pub output: PathBuf,
}
