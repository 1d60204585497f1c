//! Puts the chosen memory.x on the linker's path and links with cortex-m-rt's script (and defmt's, with
//! the `defmt` feature).
use std::path::PathBuf;
use std::{env, fs};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    println!("cargo::rerun-if-env-changed=ENIGMA_MEMORY_X");
    let memory_x = env::var("ENIGMA_MEMORY_X").map_or_else(|_| dir.join("memory.x"), PathBuf::from);
    println!("cargo::rerun-if-changed={}", memory_x.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::copy(&memory_x, out.join("memory.x")).expect("copy memory.x");
    println!("cargo::rustc-link-search={}", out.display());
    println!("cargo::rustc-link-arg-bins=-Tlink.x");
    // defmt's script only when defmt is linked (the `defmt` feature); the text log needs none.
    if env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo::rustc-link-arg-bins=-Tdefmt.x");
    }
}
