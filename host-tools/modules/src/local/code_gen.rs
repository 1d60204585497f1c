//! `code_gen_local`: code by prompting whatever provides text generation.

use crate::capability::{
    CodeGeneration, GenerateRequest, GenerationStats, Piece, Provided, Sampling, TextGeneration,
};
use crate::module::{Deps, Health, Module, ModuleError};
use crate::spec::{ModuleConfig, ModuleSpec};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub(super) struct CodeGen {
    generator: Arc<dyn TextGeneration>,
    language: String,
    max_tokens: usize,
    temperature: f32,
}

impl CodeGen {
    /// The prompt the model is given for a request.
    fn prompt(&self, request: &str, language: Option<&str>) -> String {
        let lang = language.unwrap_or(&self.language);
        format!("# Language: {lang}\n# Task: {request}\n# Solution:\n")
    }
}

impl CodeGeneration for CodeGen {
    fn describe(&self) -> String {
        format!("{} code from {}", self.language, self.generator.describe())
    }

    /// The model's continuation of the prompt. A small or untrained model writes what it can; the module
    /// does not dress that up.
    fn generate_code(
        &self,
        request: &str,
        language: Option<&str>,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&Piece<'_>) -> bool,
    ) -> Result<GenerationStats, ModuleError> {
        let req = GenerateRequest {
            prompt: self.prompt(request, language),
            max_tokens: Some(self.max_tokens),
            sampling: Sampling {
                temperature: Some(self.temperature),
                ..Sampling::default()
            },
            stop: Vec::new(),
            logprobs: None,
        };
        self.generator.generate(&req, cancel, on_text)
    }
}

pub(super) struct CodeGenModule {
    spec: &'static ModuleSpec,
    loaded: Option<Arc<CodeGen>>,
}

impl CodeGenModule {
    pub(super) fn new(spec: &'static ModuleSpec) -> Self {
        CodeGenModule { spec, loaded: None }
    }
}

impl Module for CodeGenModule {
    fn spec(&self) -> &'static ModuleSpec {
        self.spec
    }

    fn load(&mut self, config: &ModuleConfig, deps: &Deps<'_>) -> Result<Provided, ModuleError> {
        let code_gen = Arc::new(CodeGen {
            generator: deps.get::<dyn TextGeneration>("text_generation")?,
            language: super::text(config, "language"),
            max_tokens: super::int(config, "max_tokens", 512) as usize,
            temperature: super::float(config, "temperature", 0.2) as f32,
        });
        self.loaded = Some(code_gen.clone());
        Ok(Provided::new().with("code_generation", code_gen as Arc<dyn CodeGeneration>))
    }

    fn unload(&mut self) -> Result<(), ModuleError> {
        self.loaded = None;
        Ok(())
    }

    fn status(&self) -> String {
        self.loaded.as_ref().map_or("not loaded".into(), |c| {
            format!(
                "prompting for {} (up to {} tokens)",
                c.describe(),
                c.max_tokens
            )
        })
    }

    fn health(&self) -> Health {
        let Some(c) = &self.loaded else {
            return Health::NotLoaded;
        };
        let req = GenerateRequest {
            prompt: c.prompt("print hello", None),
            max_tokens: Some(1),
            sampling: Sampling {
                temperature: Some(0.0),
                ..Sampling::default()
            },
            stop: Vec::new(),
            logprobs: None,
        };
        match c
            .generator
            .generate(&req, &AtomicBool::new(false), &mut |_| true)
        {
            Ok(_) => Health::Ok("the text generator answers a code prompt".into()),
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
