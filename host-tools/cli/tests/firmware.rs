//! The firmware, end to end through `enigma flash`: stories260K boots on the emulated Cortex-M4F and prints
//! what `enigma run` prints, f32 byte for byte and q8_0 too (on the board held to a real part's 1 MiB / 256 KiB);
//! its console carries valid UTF-8 whatever bytes the model samples; a panic fails the run; a model too big
//! for a board is refused saying by how much; the real boards'
//! images build with flash and RAM use reported.
//!
//! Needs qemu-system-arm, the thumbv7em/thumbv6m targets and defmt-print (.ci/run installs them); without
//! them each test fails under CI and is skipped, loudly, elsewhere (`enigma_testkit::skip_or_fail`).

mod support;

use assert_cmd::Command;
use enigma_testkit::{on_path, require_target, require_tool, shared_file};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const PROMPT: &str = "Once upon a time";

/// Builds share firmware/target: one at a time, so no test runs an image another test's build replaced.
static FIRMWARE: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    FIRMWARE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tools a test needs (a failure under CI, a loud skip elsewhere).
fn ready(test: &str, qemu: bool, targets: &[&str]) -> bool {
    if qemu && !require_tool(test, "qemu-system-arm", "apt-get install qemu-system-arm") {
        return false;
    }
    targets.iter().all(|t| require_target(test, t))
}

fn enigma() -> Command {
    let mut c = Command::cargo_bin("enigma").unwrap();
    // The firmware's build runs its own cargo; the settings of the cargo running these tests must not leak.
    c.env_remove("CARGO_TARGET_DIR");
    c
}

/// stories260K imported into `dir`, as f32 or quantized; `None` (after a loud skip) without ../shared.
fn model(dir: &Path, quantize: Option<&str>, test: &str) -> Option<PathBuf> {
    let ckpt = shared_file("models/stories260K.bin", test)?;
    let tok = shared_file("models/tok512.bin", test)?;
    let out = dir.join(format!("stories260K-{}.enigma", quantize.unwrap_or("f32")));
    let mut cmd = enigma();
    cmd.args(["import", "llama2c"])
        .arg(ckpt)
        .arg("--tokenizer")
        .arg(tok)
        .arg("-o")
        .arg(&out);
    if let Some(q) = quantize {
        cmd.args(["--quantize", q]);
    }
    cmd.assert().success();
    Some(out)
}

struct Flashed {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

fn flash(board: &str, model: &Path, out_dir: &Path, extra: &[&str]) -> Flashed {
    let out = enigma()
        .args(["flash", "--board", board, "--model"])
        .arg(model)
        .arg("--out-dir")
        .arg(out_dir)
        .args(["--seed", "42"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stderr}");
    Flashed {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr,
    }
}

/// `enigma flash` options to generate `n` tokens from `prompt` at `temperature` (0 greedy), every token
/// eligible (no top-p cut).
fn generate_args(prompt: &str, n: usize, temperature: &str) -> Vec<String> {
    [
        "-p",
        prompt,
        "-n",
        &n.to_string(),
        "--temp",
        temperature,
        "--top-p",
        "1",
        "--top-k",
        "0",
        "--timeout",
        "300",
    ]
    .map(String::from)
    .to_vec()
}

/// 64 greedy tokens of `m` from [`PROMPT`], from `enigma run` on the host and from the firmware on `board`
/// (a QEMU board; the firmware must have run).
fn greedy_both(board: &str, m: &Path, dir: &Path) -> (Vec<u8>, Flashed) {
    let n = 64;
    let host = support::greedy_run(m, PROMPT, n).stdout;
    let _guard = lock();
    let args = generate_args(PROMPT, n, "0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fw = flash(board, m, dir, &args);
    assert!(fw.ok, "enigma flash failed");
    (host, fw)
}

/// The decoded defmt log reached stderr (needs defmt-print: a failure under CI, a loud skip elsewhere).
fn check_defmt(test: &str, stderr: &str, expect: &str) {
    if !require_tool(
        &format!("{test} (defmt decoding)"),
        "defmt-print",
        "cargo install defmt-print --locked",
    ) {
        return;
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("[firmware]") && l.contains(expect)),
        "no decoded defmt line containing {expect:?}"
    );
}

#[test]
fn qemu_f32_output_equals_enigma_run_byte_for_byte() {
    let test = "qemu_f32_output_equals_enigma_run_byte_for_byte";
    if !ready(test, true, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), None, test) else {
        return;
    };
    let (host, fw) = greedy_both("mps2-an386", &m, dir.path());
    assert!(
        host.len() > PROMPT.len() + 100,
        "host printed too little: {host:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&fw.stdout),
        String::from_utf8_lossy(&host),
        "the firmware's text differs from enigma run's"
    );
    assert_eq!(fw.stdout, host);
    check_defmt(test, &fw.stderr, "64 generated");
}

#[test]
fn qemu_q8_0_on_a_1mib_256kib_budget_matches_the_host_token_for_token() {
    let test = "qemu_q8_0_on_a_1mib_256kib_budget_matches_the_host_token_for_token";
    if !ready(test, true, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), Some("q8_0"), test) else {
        return;
    };
    // The real part's budget: the linker and build.rs prove the model, buffers and stack fit 1 MiB / 256 KiB.
    let (host, fw) = greedy_both("mps2-an386-small", &m, dir.path());
    assert!(fw.stderr.contains("of 1048576 bytes"), "no flash report");
    assert!(fw.stderr.contains("of 262144 bytes"), "no RAM report");
    // The same bytes, so the same tokens (decoding is deterministic and every token prints as it comes).
    assert_eq!(
        String::from_utf8_lossy(&fw.stdout),
        String::from_utf8_lossy(&host),
        "the q8_0 firmware's text differs from enigma run's"
    );
    check_defmt(test, &fw.stderr, "kernels");
}

/// q4_0 runs the Cortex-M4's own q4_0 kernel (nibbles through `UXTB16` + `SMLAD`, kernels/src/arm/int8.rs),
/// which only QEMU exercises; the host's q4_0 path quantizes the activations the same way.
#[test]
fn qemu_q4_0_matches_the_host_token_for_token() {
    let test = "qemu_q4_0_matches_the_host_token_for_token";
    if !ready(test, true, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), Some("q4_0"), test) else {
        return;
    };
    let (host, fw) = greedy_both("mps2-an386", &m, dir.path());
    assert!(
        host.len() > PROMPT.len() + 100,
        "host printed too little: {host:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&fw.stdout),
        String::from_utf8_lossy(&host),
        "the q4_0 firmware's text differs from enigma run's"
    );
    check_defmt(test, &fw.stderr, "kernels cortex-m");
}

/// A byte-fallback tokenizer spells a character it has no piece for as one token per byte, and a sampling
/// model can emit bytes that form no character at all: the console must still carry valid UTF-8, characters
/// whole and impossible bytes as U+FFFD. Half of tok512's tokens are bytes, and at temperature 50 sampling is
/// near uniform, so any seed gives broken sequences (about 14 in 64 tokens on the host).
#[test]
fn qemu_console_text_is_valid_utf8_with_byte_fallback_tokens() {
    let test = "qemu_console_text_is_valid_utf8_with_byte_fallback_tokens";
    if !ready(test, true, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), None, test) else {
        return;
    };
    // tok512 has no piece for "ë" or "世界": the prompt's echo is byte tokens too.
    let prompt = "Once upon a time, Zoë saw 世界";
    let _guard = lock();
    let args = generate_args(prompt, 64, "50");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fw = flash("mps2-an386", &m, dir.path(), &args);
    assert!(fw.ok, "enigma flash failed");
    let text = match std::str::from_utf8(&fw.stdout) {
        Ok(t) => t,
        Err(e) => panic!(
            "the console sent invalid UTF-8 ({e}): {:?}",
            String::from_utf8_lossy(&fw.stdout)
        ),
    };
    assert!(text.starts_with(prompt), "the prompt's echo: {text:?}");
    let generated = &text[prompt.len()..];
    assert!(
        generated.contains('\u{FFFD}'),
        "no broken byte sequence came out, so nothing was tested: {generated:?}"
    );
    check_defmt(test, &fw.stderr, "generated");
}

#[test]
fn a_firmware_panic_fails_the_run() {
    let test = "a_firmware_panic_fails_the_run";
    if !ready(test, true, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), None, test) else {
        return;
    };
    let _guard = lock();
    let out = enigma()
        .env("ENIGMA_FIRMWARE_TEST_PANIC", "1")
        .args(["flash", "--board", "mps2-an386", "--model"])
        .arg(&m)
        .arg("--out-dir")
        .arg(dir.path())
        .args([
            "-p",
            PROMPT,
            "-n",
            "4",
            "--temp",
            "0",
            "--seed",
            "1",
            "--timeout",
            "120",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        !out.status.success(),
        "a panicking firmware must fail the run"
    );
    assert!(
        stderr.contains("it panicked"),
        "the error should say it panicked"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("panicking on purpose"));
    check_defmt(test, &stderr, "panic");
}

#[test]
fn a_model_too_big_for_the_board_is_refused_before_building_saying_by_how_much() {
    let test = "a_model_too_big_for_the_board_is_refused_before_building_saying_by_how_much";
    if !ready(test, false, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), None, test) else {
        return;
    };
    let _guard = lock();
    // 1 MiB of f32 weights on a 512 KiB part: refused before any build, in one line.
    let fw = flash("nucleo-f411re", &m, dir.path(), &["--build-only"]);
    assert!(!fw.ok);
    let lines: Vec<&str> = fw.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {}", fw.stderr);
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains("does not fit the flash of nucleo-f411re")
            && lines[0].contains("over by"),
        "unclear error: {}",
        lines[0]
    );
}

#[test]
fn the_kv_cache_too_big_for_ram_fails_the_build_saying_by_how_much() {
    let test = "the_kv_cache_too_big_for_ram_fails_the_build_saying_by_how_much";
    if !ready(test, false, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), Some("q8_0"), test) else {
        return;
    };
    let _guard = lock();
    let fw = flash(
        "nucleo-f411re",
        &m,
        dir.path(),
        &["--build-only", "--context", "512"],
    );
    assert!(!fw.ok);
    let last = fw.stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("do not fit the RAM of nucleo-f411re")
            && last.contains("over by")
            && last.contains("The longest context that fits is"),
        "unclear error: {last}"
    );
}

#[test]
fn stm32f4_and_pico_images_build_with_q8_0_and_report_their_size() {
    let test = "stm32f4_and_pico_images_build_with_q8_0_and_report_their_size";
    if !ready(
        test,
        false,
        &["thumbv7em-none-eabihf", "thumbv6m-none-eabi"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), Some("q8_0"), test) else {
        return;
    };
    let _guard = lock();
    for (board, flash_len, ram_len) in [
        ("nucleo-f411re", 512 * 1024, 128 * 1024),
        ("rp-pico", 2048 * 1024 - 256, 256 * 1024),
    ] {
        let out = dir.path().join(board);
        let fw = flash(board, &m, &out, &[]);
        assert!(fw.ok, "{board}: the image did not build");
        assert!(
            fw.stderr.contains(&format!("of {flash_len} bytes")),
            "{board}: no flash report"
        );
        assert!(
            fw.stderr.contains(&format!("of {ram_len} bytes")),
            "{board}: no RAM report"
        );
        assert!(out.join(format!("{board}.elf")).is_file());
        if !on_path("probe-rs") {
            assert!(
                fw.stderr.contains("probe-rs is not installed"),
                "{board}: no probe-rs hint"
            );
        }
    }
    let uf2 = std::fs::read(dir.path().join("rp-pico/rp-pico.uf2")).unwrap();
    assert!(uf2.len() > 400 * 1024 && uf2.len().is_multiple_of(512));
    assert_eq!(&uf2[..4], &0x0A32_4655u32.to_le_bytes());
}

/// `enigma flash --serve` running in its own process group, killed (with its QEMU) when dropped.
struct Served {
    child: std::process::Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        // SAFETY: signals the process group this test started (the child leads it); nothing else.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// The board as a device the host drives (`enigma_core::protocol` over QEMU's UART on a unix socket):
/// `enigma run --port` prints what `enigma run` prints; `enigma chat --port` holds two turns, each the host's
/// continuation; a Stop ends a generation early; a malformed frame is answered with an error frame and the
/// board goes on serving.
#[test]
fn qemu_board_serves_the_host_protocol() {
    use enigma_cli::port::{Board, Reply};
    use enigma_core::protocol::{ErrorCode, Generate, Request, StopReason};
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    let test = "qemu_board_serves_the_host_protocol";
    if !ready(test, true, &["thumbv7em-none-eabihf"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(m) = model(dir.path(), None, test) else {
        return;
    };
    let sock = dir.path().join("uart.sock");
    let _guard = lock();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("enigma"));
    cmd.env_remove("CARGO_TARGET_DIR")
        .args(["flash", "--board", "mps2-an386", "--seed", "42", "--model"])
        .arg(&m)
        .arg("--out-dir")
        .arg(dir.path().join("image"))
        .arg("--serve")
        .arg(&sock)
        .process_group(0);
    let mut served = Served {
        child: cmd.spawn().unwrap(),
    };
    // The image builds first (minutes on a cold cache), then QEMU makes the socket.
    let start = Instant::now();
    while !sock.exists() {
        if let Some(status) = served.child.try_wait().unwrap() {
            panic!("enigma flash --serve ended ({status}) before QEMU served the socket");
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "no socket after 15 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = |cmd: &str, args: &[&str], stdin: &str| {
        let out = enigma()
            .arg(cmd)
            .arg("--port")
            .arg(&sock)
            .args(args)
            .write_stdin(stdin)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "enigma {cmd} --port failed: {stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };

    // enigma run --port: the host's text, byte for byte (greedy; f32 on both sides).
    let host = String::from_utf8(support::greedy_run(&m, PROMPT, 64).stdout).unwrap();
    let (board, stderr) = port("run", &["-p", PROMPT, "-n", "64", "--temp", "0"], "");
    assert_eq!(board, host, "the board's text differs from enigma run's");
    assert!(stderr.contains("64 generated"), "{stderr}");

    // enigma chat --port: two turns, each the continuation of its line (the typed prompt is not echoed).
    let second = "The little dog";
    let (chat, stderr) = port(
        "chat",
        &["-n", "24", "--temp", "0"],
        &format!("{PROMPT}\n{second}\n/quit\n"),
    );
    assert!(stderr.contains("chatting with stories260K"), "{stderr}");
    let reply = |prompt: &str| {
        let text = String::from_utf8(support::greedy_run(&m, prompt, 24).stdout).unwrap();
        text.strip_prefix(prompt)
            .unwrap_or_else(|| panic!("enigma run's text does not start with its prompt: {text:?}"))
            .to_string()
    };
    assert_eq!(chat, reply(PROMPT) + &reply(second), "the chat's replies");

    // The protocol itself: hello, a Stop mid-generation, malformed frames, still serving after them.
    let mut b = Board::open(&sock, Duration::from_secs(120)).unwrap();
    assert_eq!(b.info.board, "mps2-an386");
    assert_eq!((b.info.dim, b.info.vocab_size), (64, 512));
    let long = Generate {
        prompt: PROMPT,
        steps: 400,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 7,
    };
    let mut generated = 0;
    let stats = b
        .generate(&long, &mut |_, echo, _| {
            generated += usize::from(!echo);
            generated < 3
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::Stopped, "{stats:?}");
    assert!(
        (3..100).contains(&stats.generated),
        "stopped after {} tokens",
        stats.generated
    );
    // Not COBS at all, then a good COBS frame whose CRC is wrong: each answered, nothing else.
    b.write_raw(b"\x05not a frame\x00").unwrap();
    let mut bad = Vec::new();
    let mut scratch = [0u8; enigma_core::protocol::MAX_FRAME];
    let mut frame = [0u8; enigma_core::protocol::MAX_FRAME];
    let n = enigma_core::protocol::encode(&Request::Hello, &mut scratch, &mut frame).unwrap();
    bad.extend_from_slice(&frame[..n]);
    // Any change short of a 0x00 breaks the COBS code chain or the CRC.
    bad[n - 2] = bad[n - 2].wrapping_add(1).max(1);
    b.write_raw(&bad).unwrap();
    for _ in 0..2 {
        match b.recv().unwrap() {
            Reply::Error { code, message } => assert_eq!(code, ErrorCode::BadFrame, "{message}"),
            other => panic!("a malformed frame was answered with {other:?}"),
        }
    }
    // A Stop with nothing running is answered, then a greedy generation matches the host's again.
    b.send(&Request::Stop).unwrap();
    assert!(matches!(
        b.recv().unwrap(),
        Reply::Error {
            code: ErrorCode::Idle,
            ..
        }
    ));
    let greedy = Generate {
        steps: 64,
        temperature: 0.0,
        ..long
    };
    let mut text = Vec::new();
    let stats = b
        .generate(&greedy, &mut |_, _, piece| {
            text.extend_from_slice(piece);
            true
        })
        .unwrap();
    assert_eq!(stats.generated, 64);
    assert_eq!(
        format!("{}\n", String::from_utf8_lossy(&text)),
        host,
        "after the errors"
    );
}
