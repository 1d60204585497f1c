//! `enigma models ...`

use anyhow::{Context, Result};
use clap::Subcommand;
use enigma_models::{
    describe_shape, peek, ConvertTarget, CreateOptions, ModelStore, CHECKPOINT_FILE, MODEL_FILE,
};
use enigma_runtime::hardware::human_bytes;
use enigma_runtime::{ModelFile, ModelLock};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// The models in the models directory (ENIGMA_HOME, default ./models).
    List {
        #[arg(long)]
        json: bool,
    },
    /// One model: shape, files, metadata, its training checkpoint, and who holds its lock.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A fresh, randomly initialised model of a size preset.
    Create {
        name: String,
        /// nano, micro, tiny, mini, small, medium, base, large, xl, xxl, huge, giant, colossal, titan, omega.
        #[arg(long)]
        preset: String,
        /// Use this model's tokenizer (a model name or a .enigma path) instead of the 256-byte default.
        #[arg(long)]
        tokenizer: Option<String>,
        /// Seed of the initial weights (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Delete a model; refused while it is being trained or served.
    Delete {
        name: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Copy a model, its metadata and checkpoints under a new name.
    Copy {
        from: String,
        to: String,
    },
    /// Resize a model to another preset: overlapping weights are copied, the rest initialised (docs/MODELS.md).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to", "in_place"])))]
    Convert {
        name: String,
        #[arg(long)]
        preset: String,
        /// Write the resized model under this new name (the original stays).
        #[arg(long)]
        to: Option<String>,
        /// Replace the model's own weights.
        #[arg(long)]
        in_place: bool,
        /// Seed of the newly initialised weights.
        #[arg(long)]
        seed: Option<u64>,
    },
}

pub fn main(cmd: ModelsCommand) -> Result<()> {
    main_in(&ModelStore::open_default(), cmd)
}

pub fn main_in(store: &ModelStore, cmd: ModelsCommand) -> Result<()> {
    match cmd {
        ModelsCommand::List { json } => list(store, json),
        ModelsCommand::Info { name, json } => info(store, &name, json),
        ModelsCommand::Create {
            name,
            preset,
            tokenizer,
            seed,
        } => {
            let dir = store.create(&name, &preset, &CreateOptions { tokenizer, seed })?;
            let p = peek(&dir.join(MODEL_FILE))?;
            eprintln!(
                "created model '{name}' ({preset}, {} parameters) in {}",
                p.config.param_count(),
                dir.display()
            );
            Ok(())
        }
        ModelsCommand::Delete { name } => {
            store.delete(&name)?;
            eprintln!("deleted model '{name}'");
            Ok(())
        }
        ModelsCommand::Rename { from, to } => {
            store.rename(&from, &to)?;
            eprintln!("renamed model '{from}' to '{to}'");
            Ok(())
        }
        ModelsCommand::Copy { from, to } => {
            store.copy(&from, &to)?;
            eprintln!("copied model '{from}' to '{to}'");
            Ok(())
        }
        ModelsCommand::Convert {
            name,
            preset,
            to,
            in_place: _,
            seed,
        } => {
            let target = to.map_or(ConvertTarget::InPlace, ConvertTarget::New);
            let dir = store.convert(&name, &preset, &target, seed)?;
            let p = peek(&dir.join(MODEL_FILE))?;
            eprintln!(
                "converted '{name}' to {preset} ({}) in {}",
                describe_shape(&p.config),
                dir.display()
            );
            Ok(())
        }
    }
}

fn list(store: &ModelStore, as_json: bool) -> Result<()> {
    let (found, note) = store.reconcile()?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let rows: Vec<_> = found
        .iter()
        .map(|f| {
            let lock = ModelLock::holder(&f.dir).unwrap_or(None);
            (f, lock)
        })
        .collect();
    if as_json {
        let items: Vec<_> = rows
            .iter()
            .map(|(f, lock)| match &f.entry {
                Ok(e) => json!({"name": f.name, "ok": true, "locked_by": lock, "preset": e.preset,
                    "params": e.params, "vocab_size": e.vocab_size, "file_bytes": e.file_bytes,
                    "created_unix": e.created_unix, "trained_steps": e.trained_steps}),
                Err(why) => json!({"name": f.name, "ok": false, "locked_by": lock, "error": why}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "no models in {} (make one: enigma models create NAME --preset nano)",
            store.home().display()
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<9} {:>12} {:>7} {:>10} {:>8}  STATE",
        "NAME", "PRESET", "PARAMS", "VOCAB", "SIZE", "STEPS"
    );
    for (f, lock) in rows {
        let state = match lock {
            Some(holder) => format!("locked by {holder}"),
            None => "ready".into(),
        };
        match &f.entry {
            Ok(e) => println!(
                "{:<24} {:<9} {:>12} {:>7} {:>10} {:>8}  {state}",
                f.name,
                e.preset.as_deref().unwrap_or("custom"),
                e.params,
                e.vocab_size,
                human_bytes(e.file_bytes),
                e.trained_steps
            ),
            Err(why) => println!("{:<24} broken: {why}", f.name),
        }
    }
    Ok(())
}

fn info(store: &ModelStore, name: &str, as_json: bool) -> Result<()> {
    let dir = store.existing(name)?;
    let path = dir.join(MODEL_FILE);
    let meta = store.metadata(name)?;
    let lock = ModelLock::holder(&dir)?;
    let checkpoint = Some(dir.join(CHECKPOINT_FILE)).filter(|p| p.is_file());
    // The whole file is checked (checksum, shapes, tokenizer), as `run` would, under the same lock.
    let file = ModelFile::open_shared(&path, "info")?;
    let parsed = file.parse()?;
    let config = *parsed.config();
    file.model(enigma_core::kernels::kernels())
        .with_context(|| format!("model '{name}' does not load"))?;
    if as_json {
        let v = json!({"name": name, "dir": dir, "config": config, "file_bytes": parsed.len(),
            "params": config.param_count(), "locked_by": lock, "metadata": meta, "checkpoint": checkpoint});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model:       {name} ({})", dir.display());
    println!(
        "preset:      {}",
        meta.preset.as_deref().unwrap_or("none (custom shape)")
    );
    println!("shape:       {}", describe_shape(&config));
    println!(
        "parameters:  {} ({} on disk)",
        config.param_count(),
        human_bytes(parsed.len() as u64)
    );
    println!("source:      {}", meta.source);
    println!("created:     unix time {}", meta.created_unix);
    println!("trained:     {} steps", meta.trained_steps);
    if !meta.data.is_empty() {
        println!("data:        {}", meta.data.join(", "));
    }
    if let Some(last) = meta.losses.last() {
        println!(
            "loss:        {} at step {} ({} points recorded)",
            last.loss,
            last.step,
            meta.losses.len()
        );
    }
    println!(
        "checkpoint:  {}",
        checkpoint.map_or("none".to_string(), |p| format!(
            "{} (continue with: enigma train --resume --out {})",
            p.display(),
            dir.display()
        ))
    );
    println!(
        "lock:        {}",
        lock.map_or("free".to_string(), |h| format!("held by {h}"))
    );
    for h in &meta.history {
        println!("history:     {h}");
    }
    Ok(())
}
