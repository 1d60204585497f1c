#![no_main]
// The checks live in the library (src/safetensors.rs), so that `cargo test` there can replay inputs without libFuzzer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| enigma_fuzz::safetensors::check(data));
