//! `enigma models ...`

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use enigma_models::{
    describe_shape, peek, peek_builtin, ConvertTarget, CreateOptions, ModelError, ModelStore,
    RegistryEntry, BUILTIN_NAME, CHECKPOINT_FILE, DEFAULT_MODEL, MODEL_FILE,
};
use enigma_runtime::hardware::human_bytes;
use enigma_runtime::{ModelFile, ModelLock};
use serde_json::json;
use std::io::{BufRead, IsTerminal, Write};

#[derive(Subcommand, Debug)]
pub enum ModelsCommand {
    /// The models in the models directory (ENIGMA_HOME, default ./models).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One model: shape, files, metadata, its training checkpoint, and who holds its lock.
    Info {
        /// The model's name (`default`: the built-in model).
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// A fresh, randomly initialised model of a size preset.
    Create {
        /// The new model's name: its folder in the models home.
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
    /// Delete a model; refused while it is being trained or served. Asks first (or give --yes).
    Delete {
        /// The model's name.
        name: String,
        /// Do not ask: needed when standard input is not a terminal (scripts).
        #[arg(short, long)]
        yes: bool,
    },
    /// Rename a model. Asks first (or give --yes).
    Rename {
        /// The model's name now.
        from: String,
        /// Its new name.
        to: String,
        /// Replace a model already called TO (asks first).
        #[arg(long)]
        force: bool,
        /// Do not ask: needed when standard input is not a terminal (scripts).
        #[arg(short, long)]
        yes: bool,
    },
    /// Copy a model, its metadata and checkpoints under a new name (`default`: the built-in model).
    Copy {
        /// The model to copy.
        from: String,
        /// The copy's name.
        to: String,
        /// Replace a model already called TO (asks first).
        #[arg(long)]
        force: bool,
        /// Do not ask: needed with --force when standard input is not a terminal (scripts).
        #[arg(short, long)]
        yes: bool,
    },
    /// Resize a model to another preset: overlapping weights are copied, the rest initialised (docs/MODELS.md).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["to", "in_place"])))]
    Convert {
        /// The model to resize.
        name: String,
        /// The size preset to resize it to (nano, micro, tiny, ...).
        #[arg(long)]
        preset: String,
        /// Write the resized model under this new name (the original stays).
        #[arg(long)]
        to: Option<String>,
        /// Replace the model's own weights (asks first).
        #[arg(long)]
        in_place: bool,
        /// Seed of the newly initialised weights.
        #[arg(long)]
        seed: Option<u64>,
        /// With --to: replace a model already called that (asks first).
        #[arg(long)]
        force: bool,
        /// Do not ask: needed for --in-place and --force when standard input is not a terminal (scripts).
        #[arg(short, long)]
        yes: bool,
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
        ModelsCommand::Delete { name, yes } => {
            // The built-in model and a name that is not there are refused before anyone is asked.
            store.existing(&name)?;
            confirm(&format!("delete model '{name}'"), yes)?;
            store.delete(&name)?;
            eprintln!("deleted model '{name}'");
            Ok(())
        }
        ModelsCommand::Rename {
            from,
            to,
            force,
            yes,
        } => {
            store.existing(&from)?;
            let what = match replaces(store, &to, force)? {
                true => format!("rename model '{from}' to '{to}', replacing the model '{to}'"),
                false => format!("rename model '{from}' to '{to}'"),
            };
            confirm(&what, yes)?;
            store.rename(&from, &to, force).map_err(force_hint)?;
            eprintln!("renamed model '{from}' to '{to}'");
            Ok(())
        }
        ModelsCommand::Copy {
            from,
            to,
            force,
            yes,
        } => {
            if replaces(store, &to, force)? {
                confirm(
                    &format!("replace model '{to}' with a copy of '{from}'"),
                    yes,
                )?;
            }
            store.copy(&from, &to, force).map_err(force_hint)?;
            eprintln!("copied model '{from}' to '{to}'");
            Ok(())
        }
        ModelsCommand::Convert {
            name,
            preset,
            to,
            in_place: _,
            seed,
            force,
            yes,
        } => {
            store.existing(&name)?;
            match &to {
                None => confirm(
                    &format!("replace the weights of model '{name}' with a resized {preset} model"),
                    yes,
                )?,
                Some(to) if replaces(store, to, force)? => confirm(
                    &format!("replace model '{to}' with '{name}' resized to {preset}"),
                    yes,
                )?,
                Some(_) => {}
            }
            let target = to.map_or(ConvertTarget::InPlace, ConvertTarget::New);
            let dir = store
                .convert(&name, &preset, &target, seed, force)
                .map_err(force_hint)?;
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

/// Whether a copy, rename or convert onto `to` replaces a model: refused without `--force`, and a name no
/// model may take is refused before anyone is asked.
fn replaces(store: &ModelStore, to: &str, force: bool) -> Result<bool> {
    enigma_models::check_new_name(to)?;
    let exists = store.dir(to).exists();
    if exists && !force {
        return Err(force_hint(ModelError::Exists {
            name: to.to_string(),
            home: store.home().to_path_buf(),
        }));
    }
    Ok(exists)
}

/// A target that exists can be replaced, on purpose: say how.
fn force_hint(e: ModelError) -> anyhow::Error {
    match e {
        ModelError::Exists { .. } => anyhow::anyhow!("{e} (pass --force to replace it)"),
        e => e.into(),
    }
}

/// Asks before a model is deleted, renamed or replaced: `[y/N]` on a terminal; without one (a script, a
/// pipe) only `--yes` goes ahead, so nothing is destroyed by input that was meant for something else.
fn confirm(what: &str, yes: bool) -> Result<()> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    confirm_with(
        what,
        yes,
        terminal,
        &mut stdin.lock(),
        &mut std::io::stderr(),
    )
}

fn confirm_with(
    what: &str,
    yes: bool,
    terminal: bool,
    input: &mut impl BufRead,
    prompt: &mut impl Write,
) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !terminal {
        bail!("{what}: not confirmed; standard input is not a terminal, so pass --yes (-y) to go ahead");
    }
    write!(prompt, "{what}? [y/N] ")?;
    prompt.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(())
    } else {
        bail!("{what}: not confirmed; nothing was changed")
    }
}

/// `-` where nothing recorded how far a model was trained (an imported one, say).
fn steps(e: &RegistryEntry) -> String {
    e.trained_steps.map_or("-".into(), |n| n.to_string())
}

fn list(store: &ModelStore, as_json: bool) -> Result<()> {
    let (mut found, note) = store.reconcile()?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    found.extend(store.loose_files()?);
    found.sort_by(|a, b| a.name.cmp(&b.name));
    let builtin = peek_builtin()?;
    let builtin = RegistryEntry {
        preset: enigma_models::preset_of(&builtin.config),
        params: builtin.config.param_count(),
        vocab_size: builtin.config.vocab_size,
        file_bytes: DEFAULT_MODEL.len() as u64,
        created_unix: builtin.created_unix,
        trained_steps: builtin.trained_steps(),
    };
    let rows: Vec<_> = found
        .iter()
        .map(|f| {
            let lock = if f.loose {
                None
            } else {
                ModelLock::holder(&f.dir).unwrap_or(None)
            };
            (f, lock)
        })
        .collect();
    if as_json {
        let mut items = vec![json!({"name": BUILTIN_NAME, "ok": true, "built_in": true,
            "preset": builtin.preset, "params": builtin.params, "vocab_size": builtin.vocab_size,
            "file_bytes": builtin.file_bytes, "created_unix": builtin.created_unix,
            "trained_steps": builtin.trained_steps})];
        items.extend(rows.iter().map(|(f, lock)| match &f.entry {
            Ok(e) => json!({"name": f.name, "ok": true, "locked_by": lock, "preset": e.preset,
                "params": e.params, "vocab_size": e.vocab_size, "file_bytes": e.file_bytes,
                "created_unix": e.created_unix, "trained_steps": e.trained_steps,
                "file": f.loose.then_some(&f.dir)}),
            Err(why) => json!({"name": f.name, "ok": false, "locked_by": lock, "error": why,
                "file": f.loose.then_some(&f.dir)}),
        }));
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let row = |name: &str, e: &RegistryEntry, state: &str| {
        println!(
            "{:<24} {:<9} {:>12} {:>7} {:>10} {:>8}  {state}",
            name,
            e.preset.as_deref().unwrap_or("custom"),
            e.params,
            e.vocab_size,
            human_bytes(e.file_bytes),
            steps(e)
        )
    };
    println!(
        "{:<24} {:<9} {:>12} {:>7} {:>10} {:>8}  STATE",
        "NAME", "PRESET", "PARAMS", "VOCAB", "SIZE", "STEPS"
    );
    row(BUILTIN_NAME, &builtin, "built in (read-only)");
    for (f, lock) in rows {
        let state = match (lock, f.loose) {
            (Some(holder), _) => format!("locked by {holder}"),
            (None, true) => format!("ready (file {})", f.dir.display()),
            (None, false) => "ready".into(),
        };
        match &f.entry {
            Ok(e) => row(&f.name, e, &state),
            Err(why) => println!("{:<24} broken: {why}", f.name),
        }
    }
    if found.is_empty() {
        println!(
            "(no models in {} yet: make one with enigma models create NAME --preset nano)",
            store.home().display()
        );
    }
    Ok(())
}

fn info(store: &ModelStore, name: &str, as_json: bool) -> Result<()> {
    if name == BUILTIN_NAME {
        return info_builtin(as_json);
    }
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

/// `models info default`: what the binary carries.
fn info_builtin(as_json: bool) -> Result<()> {
    let p = peek_builtin()?;
    let file = ModelFile::from_bytes(DEFAULT_MODEL, enigma_models::DEFAULT_MODEL_NAME)?;
    file.model(enigma_core::kernels::kernels())?;
    let steps = p.trained_steps().map_or("-".into(), |n| n.to_string());
    if as_json {
        let v = json!({"name": BUILTIN_NAME, "built_in": true, "config": p.config,
            "file_bytes": p.file_len, "params": p.config.param_count(), "source": p.source,
            "trained_steps": p.trained_steps()});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model:       {BUILTIN_NAME} (built into the binary; read-only)");
    println!(
        "preset:      {}",
        enigma_models::preset_of(&p.config).unwrap_or_else(|| "none (custom shape)".into())
    );
    println!("shape:       {}", describe_shape(&p.config));
    println!(
        "parameters:  {} ({})",
        p.config.param_count(),
        human_bytes(p.file_len)
    );
    println!("source:      {}", p.source);
    println!("trained:     {steps} steps");
    println!("copy it to change it: enigma models copy {BUILTIN_NAME} NAME");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::confirm_with;

    fn answer(yes: bool, terminal: bool, typed: &str) -> (Result<(), String>, String) {
        let mut prompt = Vec::new();
        let r = confirm_with(
            "delete model 'm'",
            yes,
            terminal,
            &mut typed.as_bytes(),
            &mut prompt,
        )
        .map_err(|e| e.to_string());
        (r, String::from_utf8(prompt).unwrap())
    }

    #[test]
    fn a_terminal_is_asked_and_anything_but_yes_is_no() {
        for typed in ["y\n", "Y\n", "yes\n", " YES \n"] {
            let (r, prompt) = answer(false, true, typed);
            assert_eq!(r, Ok(()), "{typed:?}");
            assert_eq!(prompt, "delete model 'm'? [y/N] ");
        }
        for typed in ["\n", "n\n", "no\n", "yep\n", ""] {
            let (r, _) = answer(false, true, typed);
            assert!(r.unwrap_err().contains("not confirmed"), "{typed:?}");
        }
    }

    #[test]
    fn without_a_terminal_only_yes_goes_ahead_and_nothing_is_read() {
        let (r, prompt) = answer(false, false, "y\n");
        let err = r.unwrap_err();
        assert!(err.contains("--yes") && !err.contains('\n'), "{err}");
        assert_eq!(prompt, "");
        for terminal in [true, false] {
            let (r, prompt) = answer(true, terminal, "");
            assert_eq!(r, Ok(()));
            assert_eq!(prompt, "");
        }
    }
}
