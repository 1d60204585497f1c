//! The library behind the `enigma` command, so tests and benches drive the same code the CLI does.
pub mod bench;
pub mod cli;
pub mod eval;
pub mod flash;
pub mod llama2c;
pub mod models;
pub mod modules;
pub mod shared;
pub mod train;
