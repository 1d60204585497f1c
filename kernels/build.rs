//! Tells the test suite which CPU tiers it can run, so a tier this machine lacks is reported as
//! ignored ("CPU lacks avx512") instead of passing without running.
//!
//! When the target is the host, the host CPU is probed. When cross-compiling (tests run under qemu),
//! nothing can be probed: the target's baseline is assumed (NEON on aarch64), and
//! `ENIGMA_TEST_CPU_FEATURES` (comma-separated, e.g. `dotprod`) declares what the emulated CPU adds.
//! Each test also checks run-time detection agrees with the claim, so a wrong claim fails loudly.

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=ENIGMA_TEST_CPU_FEATURES");
    for c in [
        "enigma_cpu_avx2",
        "enigma_cpu_avx512",
        "enigma_cpu_avx512vnni",
        "enigma_cpu_neon",
        "enigma_cpu_dotprod",
        "enigma_arm_dsp",
    ] {
        println!("cargo::rustc-check-cfg=cfg({c})");
    }

    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();

    // Armv7E-M and Armv8-M Mainline have the DSP extension (SXTB16, SMLAD); Armv6-M and Armv7-M do not.
    if arch == "arm" && (target.starts_with("thumbv7em") || target.starts_with("thumbv8m.main")) {
        println!("cargo::rustc-cfg=enigma_arm_dsp");
    }

    let mut feats: Vec<String> = env::var("ENIGMA_TEST_CPU_FEATURES")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if target == host {
        feats.extend(probe_host());
    }
    if arch == "aarch64" {
        // NEON is part of the aarch64 baseline of every target we build for.
        feats.push("neon".into());
    }
    let has = |f: &str| feats.iter().any(|x| x == f);
    if arch == "x86_64" {
        if has("avx2") {
            println!("cargo::rustc-cfg=enigma_cpu_avx2");
        }
        if has("avx512") {
            println!("cargo::rustc-cfg=enigma_cpu_avx512");
        }
        if has("avx512") && has("avx512vnni") {
            println!("cargo::rustc-cfg=enigma_cpu_avx512vnni");
        }
    }
    if arch == "aarch64" {
        println!("cargo::rustc-cfg=enigma_cpu_neon");
        if has("dotprod") {
            println!("cargo::rustc-cfg=enigma_cpu_dotprod");
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn probe_host() -> Vec<String> {
    let mut v = Vec::new();
    // The same sets `Tier::supported` checks at run time.
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        v.push("avx2".to_string());
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            v.push("avx512".to_string());
            if is_x86_feature_detected!("avx512vnni") {
                v.push("avx512vnni".to_string());
            }
        }
    }
    v
}

#[cfg(target_arch = "aarch64")]
fn probe_host() -> Vec<String> {
    let mut v = Vec::new();
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        v.push("dotprod".to_string());
    }
    v
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn probe_host() -> Vec<String> {
    Vec::new()
}
