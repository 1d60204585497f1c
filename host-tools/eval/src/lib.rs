//! Measuring a model: [`perplexity`] on a text, and [`speed`] (prefill and decode) against the machine's
//! measured memory bandwidth and FMA peak.
pub mod perplexity;
pub mod speed;
