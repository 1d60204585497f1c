//! The library behind the `enigma` command, so tests and benches drive the same code the CLI does.
pub mod cli;
pub mod llama2c;
pub mod shared;
