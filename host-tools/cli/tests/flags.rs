//! The command line speaks as llama.cpp users expect, and explains itself.

use assert_cmd::Command;
use clap::CommandFactory;

#[test]
fn version_names_the_program_and_its_version() {
    let out = Command::cargo_bin("enigma")
        .unwrap()
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("enigma {}", env!("CARGO_PKG_VERSION")),
        "{text:?}"
    );
}

/// Every option and argument of every subcommand has help text.
#[test]
fn every_option_has_help_text() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(format!("{path} {} (the command)", sub.get_name()));
            }
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&enigma_cli::Cli::command(), "enigma", &mut missing);
    assert!(
        missing.is_empty(),
        "without help text:\n{}",
        missing.join("\n")
    );
}

/// llama.cpp's short flags mean what they mean there: `-p` prompt, `-t` threads, `-c` context, `-s` seed.
#[test]
fn llama_cpp_short_flags_parse_as_in_llama_cpp() {
    use clap::Parser;
    let cli = enigma_cli::Cli::try_parse_from([
        "enigma",
        "run",
        "-m",
        "x",
        "-p",
        "Hi",
        "-n",
        "5",
        "-t",
        "3",
        "-c",
        "64",
        "-s",
        "7",
        "--temp",
        "0.5",
        "--top-k",
        "9",
        "--top-p",
        "0.8",
        "--repeat-penalty",
        "1.1",
    ])
    .unwrap();
    let enigma_cli::Command::Run(r) = cli.command else {
        panic!("not run")
    };
    assert_eq!(r.prompt, "Hi");
    assert_eq!(r.length.n_predict, 5);
    assert_eq!(r.length.ctx_size, Some(64));
    assert_eq!(r.engine.threads, Some(3));
    assert_eq!(r.sampling.seed, Some(7));
    assert_eq!(r.sampling.temperature, 0.5);
    assert_eq!(r.sampling.top_k, 9);
    assert_eq!(r.sampling.top_p, 0.8);
    assert_eq!(r.sampling.repeat_penalty, 1.1);
}

/// A reader that stops early (`| head`) ends the program quietly, not in a panic.
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::process::Stdio;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("enigma"))
        .args(["modules", "list"])
        .env(
            "ENIGMA_HOME",
            std::env::temp_dir().join("enigma-no-such-home"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end closes before the program (still starting) writes its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--kv-cache f16`, or llama.cpp's `--cache-type-k`/`--cache-type-v` when they agree; f32 when none is given.
#[test]
fn kv_cache_type_flags_parse_and_must_agree() {
    use clap::Parser;
    use enigma_core::KvType;
    let kv = |flags: &[&str]| {
        let args = ["enigma", "bench", "-m", "x"].iter().chain(flags);
        let enigma_cli::Command::Bench(b) = enigma_cli::Cli::try_parse_from(args).unwrap().command
        else {
            panic!("not bench")
        };
        b.engine.kv_type().map_err(|e| e.to_string())
    };
    assert_eq!(kv(&[]), Ok(KvType::F32));
    assert_eq!(kv(&["--kv-cache", "f16"]), Ok(KvType::F16));
    assert_eq!(
        kv(&["--cache-type-k", "f16", "--cache-type-v", "f16"]),
        Ok(KvType::F16)
    );
    let err = kv(&["--cache-type-k", "f16", "--cache-type-v", "f32"]).unwrap_err();
    assert!(
        err.contains("keys and values are kept in one type"),
        "{err}"
    );
    let engine = |args: &[&str]| match enigma_cli::Cli::try_parse_from(args).unwrap().command {
        enigma_cli::Command::Run(a) => a.engine,
        enigma_cli::Command::Chat(a) => a.engine,
        enigma_cli::Command::Eval(a) => a.engine,
        _ => panic!("{args:?}"),
    };
    for args in [
        &["enigma", "run", "--kv-cache", "f16"][..],
        &["enigma", "chat", "--kv-cache", "f16"],
        &["enigma", "eval", "--kv-cache", "f16", "--data", "t.txt"],
    ] {
        assert_eq!(engine(args).kv_type().ok(), Some(KvType::F16), "{args:?}");
    }
    assert!(enigma_cli::Cli::try_parse_from(["enigma", "run", "--kv-cache", "q8_0"]).is_err());
}
