//! `--device cuda` on a machine without a usable GPU (CI's): each command that takes it (run, chat, serve,
//! bench, eval) stops with one line on stderr that starts "error: --device cuda", a non-zero exit and no
//! panic, before touching the model. On a machine with a GPU this test has nothing to check and says so;
//! runtime-cuda/tests/gpu.rs covers that case.

use assert_cmd::Command;

#[test]
fn device_cuda_without_a_gpu_is_one_clear_line() {
    let hw = enigma_runtime::Hardware::detect();
    if !hw.gpus.is_empty() {
        eprintln!(
            "device_cuda_without_a_gpu_is_one_clear_line: this machine has a GPU; nothing to check"
        );
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 6] = [
        &["run", "-n", "2", "--device", "cuda"],
        &["chat", "--device", "cuda:0"],
        &["serve", "--port", "0", "--device", "cuda"],
        &["bench", "--rounds", "1", "--device", "cuda"],
        &["eval", "--data", "Cargo.toml", "--device", "cuda"],
        &["run", "-n", "2", "--device", "cuda:7"],
    ];
    for args in commands {
        let out = Command::cargo_bin("enigma")
            .unwrap()
            .args(args)
            .env("ENIGMA_HOME", home.path())
            .write_stdin("")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: --device cuda"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn unknown_devices_are_refused_by_name() {
    let out = Command::cargo_bin("enigma")
        .unwrap()
        .args(["run", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown device \"tpu\" (cpu, cuda or cuda:N)"),
        "{err}"
    );
}
