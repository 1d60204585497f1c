//! The crate layout of docs/DESIGN.md, checked on the real manifests: the CLI is the only crate that knows
//! them all, and nothing depends on it.

use std::collections::BTreeMap;

/// Each workspace crate's name and the names of the workspace crates it depends on (any kind).
fn workspace_deps() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: Vec<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["name"].as_str())
                .filter(|d| names.iter().any(|n| n == d))
                .map(String::from)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

#[test]
fn no_crate_depends_on_the_cli_and_the_layers_point_one_way() {
    let deps = workspace_deps();
    for crate_ in [
        "enigma-cli",
        "enigma-models",
        "enigma-train",
        "enigma-modules",
        "enigma-flash",
        "enigma-eval",
        "enigma-testkit",
        "enigma-benches",
    ] {
        assert!(
            deps.contains_key(crate_),
            "{crate_} is in the workspace: {deps:?}"
        );
    }
    for (name, d) in &deps {
        assert!(
            !d.iter().any(|x| x == "enigma-cli"),
            "{name} depends on the CLI crate"
        );
    }
    let uses = |a: &str, b: &str| deps[a].iter().any(|x| x == b);
    // The engine never reaches up into the tools.
    for low in ["enigma-kernels", "enigma-core", "enigma-runtime"] {
        for high in [
            "enigma-models",
            "enigma-train",
            "enigma-modules",
            "enigma-eval",
        ] {
            assert!(!uses(low, high), "{low} depends on {high}");
        }
    }
    // Modules are registered by their crates: the manager does not know the trainer.
    assert!(uses("enigma-train", "enigma-modules"));
    assert!(!uses("enigma-modules", "enigma-train"));
    // So are the server's and the network's: the manager knows neither, and the server never the reverse.
    for crate_ in ["enigma-serve", "enigma-network"] {
        assert!(uses(crate_, "enigma-modules"), "{crate_}");
        assert!(!uses("enigma-modules", crate_), "{crate_}");
    }
    // Benches take imports from the models crate, not from the CLI.
    assert!(uses("enigma-benches", "enigma-models"));
}
