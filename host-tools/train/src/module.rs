//! The `training` module: fine-tunes the loaded model with the trainer, writing the result as a model of
//! the models directory. Loading it checks and prepares a run; the run itself is long and is started by
//! whoever holds the handle (the server, a test) through [`Training::run`].

use crate::{Summary, TrainOptions};
use enigma_models::{check_new_name, ModelStore};
use enigma_modules::capability::{LanguageModel, Provided, Tokenization, Training, TrainingReport};
use enigma_modules::spec::{ModuleConfig, ModuleSpec, Value};
use enigma_modules::{catalog, Deps, Health, Module, ModuleError, Registry};
use enigma_runtime::ModelLock;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Registers `training` over the models directory of `store`.
pub fn register(registry: &mut Registry, store: &ModelStore) {
    registry.register(Box::new(TrainingModule {
        spec: catalog::by_id("training"),
        store: store.clone(),
        job: None,
    }));
}

/// A fine-tuning run, checked and ready.
pub struct TrainingJob {
    model: Arc<dyn LanguageModel>,
    /// The model name the result is written as.
    pub output: String,
    pub options: TrainOptions,
    store: ModelStore,
    running: Mutex<()>,
}

impl TrainingJob {
    /// Trains (holding the output folder's lock, as `enigma train` does) and records the run in the
    /// output model's metadata.json. One run at a time per job.
    pub fn train(&self) -> anyhow::Result<Summary> {
        let _one = self
            .running
            .try_lock()
            .map_err(|_| anyhow::anyhow!("a training run of this module is already going"))?;
        let summary = crate::train(&self.options, self.model.backend().kernels())?;
        self.store.record_training(
            &self.output,
            self.model.name(),
            summary.steps,
            &self.options.data,
            summary.final_loss,
        )?;
        Ok(summary)
    }
}

impl Training for TrainingJob {
    fn describe(&self) -> String {
        let data: Vec<String> = self
            .options
            .data
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "fine-tunes {} on {} for {} steps (lr {}) into model '{}'",
            self.model.name(),
            data.join(", "),
            self.options.steps.unwrap_or_default(),
            self.options.lr.unwrap_or_default(),
            self.output
        )
    }

    fn run(&self) -> Result<TrainingReport, ModuleError> {
        // The whole chain of causes, on one line.
        let summary = self
            .train()
            .map_err(|e| ModuleError::Failed(format!("{e:#}")))?;
        Ok(TrainingReport {
            output: self.output.clone(),
            steps: summary.steps,
            final_loss: summary.final_loss,
        })
    }

    fn is_running(&self) -> bool {
        self.running.try_lock().is_err()
    }
}

pub struct TrainingModule {
    spec: &'static ModuleSpec,
    store: ModelStore,
    job: Option<Arc<TrainingJob>>,
}

fn config_err(e: impl std::fmt::Display) -> ModuleError {
    ModuleError::Config(e.to_string())
}

impl TrainingModule {
    fn prepare(&self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<TrainingJob, ModuleError> {
        let model = deps.get::<dyn LanguageModel>("language_model")?;
        let tokenizer = deps.get::<dyn Tokenization>("tokenization")?;
        // The trainer keeps a model's tokenizer with its weights; another one would not match the embedding.
        if tokenizer.source() != model.name() {
            return Err(ModuleError::Failed(format!(
                "training uses the model's own tokenizer, and the tokenizer module holds {}'s",
                tokenizer.source()
            )));
        }
        let data: Vec<PathBuf> = match config.get("data") {
            Some(Value::List(l)) if !l.is_empty() => l.iter().map(PathBuf::from).collect(),
            _ => {
                return Err(config_err(
                    "choose the training data: --set data=FILE[,FILE...]",
                ))
            }
        };
        for d in &data {
            if !d.is_file() {
                return Err(config_err(format!("data: {}: no such file", d.display())));
            }
        }
        let output = match config.get("output").and_then(Value::as_str) {
            Some(o) if !o.is_empty() => o.to_string(),
            _ => format!("{}-tuned", model.name().trim_end_matches(".enigma")),
        };
        check_new_name(&output).map_err(config_err)?;
        let out = self.store.dir(&output);
        if let Some(holder) = ModelLock::holder(&out).map_err(config_err)? {
            return Err(ModuleError::Failed(format!(
                "the output model '{output}' is locked by {holder}"
            )));
        }
        // The trainer starts from a file; the built-in model is bytes of the binary.
        if !model.path().is_file() {
            return Err(config_err(format!(
                "the training module fine-tunes a model file, and {} has none: copy it into the models home first (enigma models copy {} NEW)",
                model.name(),
                model.name()
            )));
        }
        let mut options = TrainOptions::new(data, out);
        options.init = Some(model.path().to_path_buf());
        options.steps = config
            .get("steps")
            .and_then(Value::as_int)
            .map(|n| n as u64);
        options.lr = config
            .get("learning_rate")
            .and_then(Value::as_float)
            .map(|x| x as f32);
        if let Some(b) = config.get("batch_size").and_then(Value::as_int) {
            options.batch_size = b as usize;
        }
        options.allow_small_data =
            config.get("allow_small_data").and_then(Value::as_bool) == Some(true);
        options.quiet = true;
        Ok(TrainingJob {
            model,
            output,
            options,
            store: self.store.clone(),
            running: Mutex::new(()),
        })
    }
}

impl Module for TrainingModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let job = Arc::new(self.prepare(config, deps)?);
        self.job = Some(job.clone());
        Ok(Provided::new().with_all(&["model_training", "fine_tuning"], job as Arc<dyn Training>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        if self.job.as_ref().is_some_and(|j| j.is_running()) {
            return Err(ModuleError::Failed(
                "a training run is going; unload it when the run finishes".into(),
            ));
        }
        self.job = None;
        Ok(())
    }

    fn status(&self) -> String {
        match &self.job {
            None => "not loaded".into(),
            Some(j) if j.is_running() => format!("running: {}", j.describe()),
            Some(j) => j.describe(),
        }
    }

    /// Ready when the data can still be read and nobody else holds the output model.
    fn health(&self) -> Health {
        let Some(j) = &self.job else {
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
    use enigma_models::{CreateOptions, ModelStore};
    use enigma_modules::capability::Training;
    use enigma_modules::{LoadOptions, Registry, State};

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
        let mut registry = Registry::new();
        enigma_modules::local::register(&mut registry, &store);
        super::register(&mut registry, &store);
        let m = enigma_modules::open(&home, enigma_runtime::Hardware::detect(), registry).unwrap();
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
        let job = m.get::<dyn Training>("fine_tuning").unwrap();
        let summary = job.run().unwrap();
        assert_eq!(summary.steps, 2);
        assert_eq!(summary.output, "m-tuned");
        assert!(summary.final_loss.is_finite());
        let meta = store.metadata("m-tuned").unwrap();
        assert_eq!(meta.trained_steps, 2);
        assert_eq!(meta.data, [data.display().to_string()]);
        assert_eq!(meta.losses.len(), 1);
        assert!(meta.source.contains("fine-tuned from m"), "{}", meta.source);
        let (found, _) = store.reconcile().unwrap();
        assert!(found.iter().any(|f| f.name == "m-tuned" && f.entry.is_ok()));
        m.unload("model", true).unwrap();
        assert!(m.handle("fine_tuning").is_err());
        assert_eq!(m.state("training").unwrap(), State::Unloaded);
    }
}
