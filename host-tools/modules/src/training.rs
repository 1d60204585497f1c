//! The `training` module: fine-tunes the loaded model with `enigma train` (enigma_train), writing the result
//! as a model of the models directory. Loading it checks and prepares a run; the run itself is long and is
//! started by whoever holds the engine (the server, a test) with [`TrainingJob::run`].

use super::builtin::{Engine, LoadedModel};
use super::module::{Health, Module, ModuleError};
use super::spec::{ModuleConfig, ModuleSpec, Value};
use clap::Parser;
use enigma_models::{check_name, ModelStore};
use enigma_runtime::ModelLock;
use enigma_train::{Summary, TrainOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// `enigma train`'s own flags, so a run here gets exactly the defaults and checks the command has.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    options: TrainOptions,
}

/// A fine-tuning run, checked and ready.
pub struct TrainingJob {
    pub model: Arc<LoadedModel>,
    /// The model name the result is written as.
    pub output: String,
    pub options: TrainOptions,
    store: ModelStore,
    running: Mutex<()>,
}

impl TrainingJob {
    /// Trains (holding the output folder's lock, as `enigma train` does) and records the run in the
    /// output model's metadata.json. One run at a time per job.
    pub fn run(&self) -> anyhow::Result<Summary> {
        let _one = self
            .running
            .try_lock()
            .map_err(|_| anyhow::anyhow!("a training run of this module is already going"))?;
        let summary = enigma_train::train(&self.options, self.model.backend.kernels())?;
        self.store.record_training(
            &self.output,
            &self.model.name,
            summary.steps,
            &self.options.data,
            summary.final_loss,
        )?;
        Ok(summary)
    }

    pub fn is_running(&self) -> bool {
        self.running.try_lock().is_err()
    }
}

pub struct TrainingModule {
    pub(super) spec: &'static ModuleSpec,
    pub(super) engine: Arc<Engine>,
}

fn config_err(e: impl std::fmt::Display) -> ModuleError {
    ModuleError::Config(e.to_string())
}

impl TrainingModule {
    fn prepare(&self, config: &ModuleConfig) -> Result<TrainingJob, ModuleError> {
        let model = self
            .engine
            .model()
            .ok_or_else(|| ModuleError::Failed("the model module is not loaded".into()))?;
        let tokenizer = self
            .engine
            .tokenizer()
            .ok_or_else(|| ModuleError::Failed("the tokenizer module is not loaded".into()))?;
        // The trainer keeps a model's tokenizer with its weights; another one would not match the embedding.
        if tokenizer.path != model.path {
            return Err(ModuleError::Failed(format!(
                "training uses the model's own tokenizer, and the tokenizer module holds {}'s",
                tokenizer.name
            )));
        }
        let data: Vec<String> = match config.get("data") {
            Some(Value::List(l)) if !l.is_empty() => l.clone(),
            _ => {
                return Err(config_err(
                    "choose the training data: --set data=FILE[,FILE...]",
                ))
            }
        };
        for d in &data {
            if !std::path::Path::new(d).is_file() {
                return Err(config_err(format!("data: {d}: no such file")));
            }
        }
        let output = match config.get("output").and_then(Value::as_str) {
            Some(o) if !o.is_empty() => o.to_string(),
            _ => format!("{}-tuned", model.name.trim_end_matches(".enigma")),
        };
        check_name(&output).map_err(config_err)?;
        let store = self.engine.store.clone();
        let out = store.dir(&output);
        if let Some(holder) = ModelLock::holder(&out).map_err(config_err)? {
            return Err(ModuleError::Failed(format!(
                "the output model '{output}' is locked by {holder}"
            )));
        }
        let num = |k: &str| config.get(k).map_or_else(String::new, |v| v.to_string());
        let mut args: Vec<String> = vec!["train".into(), "--data".into()];
        args.extend(data);
        for (flag, value) in [
            ("--init", model.path.display().to_string()),
            ("--out", out.display().to_string()),
            ("--steps", num("steps")),
            ("--lr", num("learning_rate")),
            ("--batch-size", num("batch_size")),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        args.push("--quiet".into());
        if config.get("allow_small_data").and_then(Value::as_bool) == Some(true) {
            args.push("--allow-small-data".into());
        }
        let flags = Flags::try_parse_from(&args).map_err(|e| {
            config_err(e.to_string().lines().next().unwrap_or_default().to_string())
        })?;
        Ok(TrainingJob {
            model,
            output,
            options: flags.options,
            store,
            running: Mutex::new(()),
        })
    }
}

impl Module for TrainingModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig) -> Result<(), ModuleError> {
        let job = self.prepare(config)?;
        self.engine.set_training(Some(Arc::new(job)));
        Ok(())
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        if self.engine.training().is_some_and(|j| j.is_running()) {
            return Err(ModuleError::Failed(
                "a training run is going; unload it when the run finishes".into(),
            ));
        }
        self.engine.set_training(None);
        Ok(())
    }

    fn status(&self) -> String {
        let Some(j) = self.engine.training() else {
            return "not loaded".into();
        };
        let data: Vec<String> = j
            .options
            .data
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "{}fine-tunes {} on {} for {} steps (lr {}) into model '{}'",
            if j.is_running() { "running: " } else { "" },
            j.model.name,
            data.join(", "),
            j.options.steps.unwrap_or_default(),
            j.options.lr.unwrap_or_default(),
            j.output
        )
    }

    /// Ready when the data can still be read and nobody else holds the output model.
    fn health(&self) -> Health {
        let Some(j) = self.engine.training() else {
            return Health::NotLoaded;
        };
        if j.is_running() {
            return Health::Ok("a run is going".into());
        }
        let missing: Vec<&PathBuf> = j.options.data.iter().filter(|p| !p.is_file()).collect();
        if !missing.is_empty() {
            return Health::Unhealthy(format!("training data gone: {missing:?}"));
        }
        match ModelLock::holder(j.store.dir(&j.output)) {
            Ok(Some(h)) => Health::Unhealthy(format!("the output model is locked by {h}")),
            Err(e) => Health::Unhealthy(e.to_string()),
            Ok(None) => Health::Ok("ready to train".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{self as modules, LoadOptions, State};
    use enigma_models::{CreateOptions, ModelStore};

    #[test]
    fn the_training_module_fine_tunes_the_loaded_model_into_a_new_one() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path().join("models");
        let store = ModelStore::new(&home);
        let opts = CreateOptions {
            seed: Some(1),
            ..CreateOptions::default()
        };
        store.create("m", "nano", &opts).unwrap();
        let data = t.path().join("data.txt");
        std::fs::write(&data, "the cat sat on the mat\n".repeat(40)).unwrap();
        let (m, engine, _) = modules::open(&home, enigma_runtime::Hardware::detect()).unwrap();
        let set = |kv: Vec<String>| LoadOptions {
            with_deps: false,
            set: kv,
        };
        m.load("model", &set(vec!["model=m".into(), "threads=1".into()]))
            .unwrap();
        // Needs both; --with-deps cannot help here since the model needs --set.
        let err = m
            .load("training", &set(vec![format!("data={}", data.display())]))
            .unwrap_err();
        assert!(err.to_string().contains("needs tokenizer"), "{err}");
        m.load("tokenizer", &LoadOptions::default()).unwrap();
        let err = m.load("training", &LoadOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--set data=FILE"), "{err}");
        let err = m
            .load("training", &set(vec!["learning_rate=0.01".into()]))
            .unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        let kv = vec![
            format!("data={}", data.display()),
            "steps=2".into(),
            "batch_size=1".into(),
            "allow_small_data=true".into(),
        ];
        m.load("training", &set(kv)).unwrap();
        assert_eq!(m.state("training").unwrap(), State::Loaded);
        assert!(m
            .status("training")
            .unwrap()
            .contains("into model 'm-tuned'"));
        let job = engine.training().unwrap();
        let summary = job.run().unwrap();
        assert_eq!(summary.steps, 2);
        assert!(summary.final_loss.is_finite());
        let meta = store.metadata("m-tuned").unwrap();
        assert_eq!(meta.trained_steps, 2);
        assert_eq!(meta.data, [data.display().to_string()]);
        assert_eq!(meta.losses.len(), 1);
        assert!(meta.source.contains("fine-tuned from m"), "{}", meta.source);
        let (found, _) = store.reconcile().unwrap();
        assert!(found.iter().any(|f| f.name == "m-tuned" && f.entry.is_ok()));
        m.unload("model", true).unwrap();
        assert!(engine.training().is_none());
    }
}
