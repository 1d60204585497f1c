//! Measuring a model: [`perplexity`] on a text, and [`speed`] (prefill and decode) against the machine's
//! measured memory bandwidth and FMA peak, and [`report`]: what `enigma bench` says about them.
pub mod perplexity;
pub mod report;
pub mod speed;
