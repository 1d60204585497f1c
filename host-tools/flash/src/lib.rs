//! `enigma flash`: build the firmware with a model embedded, then run it (QEMU boards) or flash it (real boards).
//!
//! The firmware lives in `firmware/` (its own cargo workspace, one crate per board). This module sets the
//! build-time settings (`ENIGMA_MODEL`, the prompt and sampler, the context, the memory budget), runs cargo in
//! the board's folder, reports flash and RAM use against the board's `memory.x`, and then:
//! - QEMU boards: boots the image in `qemu-system-arm`, streams the console (UART0) to stdout, decodes the
//!   defmt log (UART1) with `defmt-print` when it is installed, and fails when the firmware does; with
//!   `--insn-plugin` it counts instructions per generated token (`benches/firmware_insncount.sh`);
//! - real boards: flashes with `probe-rs` when it is installed (and writes a UF2 for the Pico), or says what
//!   to install and where the image is.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct FlashArgs {
    /// The board: mps2-an386 (Cortex-M4F under QEMU), mps2-an386-small (the same with a real part's 1 MiB
    /// flash / 256 KiB RAM budget), nucleo-f411re (STM32F411RE), rp-pico (RP2040).
    #[arg(long)]
    pub board: String,
    /// The .enigma model to embed in flash.
    #[arg(short, long)]
    pub model: PathBuf,
    /// A prompt the firmware runs at boot. Empty: it reads prompts from its console (chat over the UART).
    #[arg(short = 'p', long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate per prompt.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n_predict: usize,
    /// Temperature: 0 is greedy (the flags are `enigma run`'s, named as llama.cpp names them).
    #[arg(long = "temp", visible_alias = "temperature", default_value_t = 0.8)]
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P (1 = off).
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Penalty for tokens among the last --repeat-last-n (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many of the last tokens --repeat-penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: u32,
    /// Random seed (default: from the clock).
    #[arg(short, long)]
    pub seed: Option<u64>,
    /// Context length in tokens the RAM buffers hold (default: the model's, or the longest that fits).
    #[arg(short = 'c', long = "ctx-size", visible_alias = "context")]
    pub context: Option<u32>,
    /// Kernel tier by name (default: the best the MCU has, e.g. cortex-m).
    #[arg(long)]
    pub kernels: Option<String>,
    /// Build the image and report its size, without running or flashing it.
    #[arg(long)]
    pub build_only: bool,
    /// Folder for the image (ELF, and UF2 for the Pico) and the defmt log
    /// (default: firmware/target/images/BOARD).
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// The firmware sources (default: $ENIGMA_FIRMWARE_DIR, else the firmware/ beside this build's sources).
    #[arg(long)]
    pub firmware_dir: Option<PathBuf>,
    /// Longest a QEMU run may take, in seconds (0: no limit; default 600 with a prompt, none without).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// QEMU boards: count instructions with this TCG plugin (a build of shared/tools/qemu-insncount.c) and
    /// print instructions per generated token.
    #[arg(long)]
    pub insn_plugin: Option<PathBuf>,
    /// QEMU boards: put the console on a unix socket at PATH (instead of this terminal) and keep the board
    /// running, for `enigma run --port PATH` / `enigma chat --port PATH` to drive it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["prompt", "insn_plugin"])]
    pub serve: Option<PathBuf>,
}

/// A board the firmware is built for: what `enigma flash` knows beyond the board's crate. The rest (target,
/// runner, bin, memory.x) is read from the crate's own files, the ones `cargo run` there uses ([`BoardCrate`]).
#[derive(Clone, Copy, Debug)]
pub struct Board {
    pub name: &'static str,
    /// Its crate under firmware/boards/.
    pub dir: &'static str,
    /// A memory.x in the crate's folder to hold the build to instead of the crate's own.
    pub memory_x: Option<&'static str>,
    /// UF2 family id, for boards flashed by copying a UF2 file.
    pub uf2_family: Option<u32>,
    pub about: &'static str,
}

pub const BOARDS: [Board; 4] = [
    Board {
        name: "mps2-an386",
        dir: "mps2-an386",
        memory_x: None,
        uf2_family: None,
        about: "Arm MPS2 AN386, Cortex-M4F, emulated by QEMU (4 MiB flash, 4 MiB RAM)",
    },
    Board {
        name: "mps2-an386-small",
        dir: "mps2-an386",
        memory_x: Some("memory-small.x"),
        uf2_family: None,
        about: "the same, held to a real Cortex-M4F part's budget (1 MiB flash, 256 KiB RAM)",
    },
    Board {
        name: "nucleo-f411re",
        dir: "nucleo-f411re",
        memory_x: None,
        uf2_family: None,
        about: "ST Nucleo-F411RE, STM32F411RE Cortex-M4F at 100 MHz (512 KiB flash, 128 KiB RAM)",
    },
    Board {
        name: "rp-pico",
        dir: "rp-pico",
        memory_x: None,
        uf2_family: Some(0xe48b_ff56),
        about: "Raspberry Pi Pico, RP2040 Cortex-M0+ at 125 MHz (2 MiB flash, 264 KiB RAM)",
    },
];

/// How a board's image runs, from the runner in its `.cargo/config.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    /// `qemu-system-arm -machine MACHINE -cpu CPU ...`
    Qemu { machine: String, cpu: String },
    /// `probe-rs run --chip CHIP`
    Probe { chip: String },
}

/// What a board's crate states about itself: `.cargo/config.toml`'s `[build] target`, the target's runner
/// and `ENIGMA_MEMORY_X`, and the `[[bin]]` of its Cargo.toml. One source: `cargo run --release` in the
/// board's folder and `enigma flash` both follow these files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoardCrate {
    pub bin: String,
    pub target: String,
    pub runner: Runner,
    /// The memory.x the crate builds against, relative to its folder.
    pub memory_x: String,
}

impl Board {
    /// Reads the facts of this board's crate under the firmware folder `fw`.
    pub fn read_crate(&self, fw: &Path) -> Result<BoardCrate> {
        let dir = fw.join("boards").join(self.dir);
        let read = |rel: &str| {
            let p = dir.join(rel);
            std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))
                .map(|text| (text, p))
        };
        let (config, config_path) = read(".cargo/config.toml")?;
        let (manifest, manifest_path) = read("Cargo.toml")?;
        let (target, runner, memory_x) =
            parse_cargo_config(&config).with_context(|| format!("{}", config_path.display()))?;
        let bin = parse_bin(&manifest).with_context(|| format!("{}", manifest_path.display()))?;
        Ok(BoardCrate {
            bin,
            target,
            runner,
            memory_x,
        })
    }
}

fn parse_toml(text: &str) -> Result<toml::Table> {
    text.parse::<toml::Table>()
        .map_err(|e| anyhow!("not valid TOML: {e}"))
}

/// `[build] target`, that target's runner and `[env] ENIGMA_MEMORY_X` of a board's `.cargo/config.toml`.
pub fn parse_cargo_config(text: &str) -> Result<(String, Runner, String)> {
    let t = parse_toml(text)?;
    let target = t
        .get("build")
        .and_then(|b| b.get("target"))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| anyhow!("no [build] target"))?;
    let runner = t
        .get("target")
        .and_then(|ts| ts.get(target))
        .and_then(|ts| ts.get("runner"))
        .ok_or_else(|| anyhow!("no runner under [target.{target}]"))?;
    // Cargo takes a runner as one string split at spaces, or as an array of words.
    let words: Vec<&str> = match runner {
        toml::Value::String(s) => s.split_whitespace().collect(),
        toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_str).collect(),
        _ => bail!("the runner of [target.{target}] is neither a string nor an array"),
    };
    let after = |flag: &str| {
        words
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].to_string())
            .ok_or_else(|| anyhow!("the runner {words:?} has no {flag}"))
    };
    let runner = match words.first().copied() {
        Some("qemu-system-arm") => Runner::Qemu {
            machine: after("-machine")?,
            cpu: after("-cpu")?,
        },
        Some("probe-rs") => Runner::Probe {
            chip: after("--chip")?,
        },
        _ => bail!("the runner {words:?} is neither qemu-system-arm nor probe-rs"),
    };
    // `[env]` takes a plain string or a table with `value` (and `relative`, which is how the boards say it).
    let memory_x = t
        .get("env")
        .and_then(|e| e.get("ENIGMA_MEMORY_X"))
        .and_then(|v| v.as_str().or_else(|| v.get("value")?.as_str()))
        .ok_or_else(|| anyhow!("no [env] ENIGMA_MEMORY_X"))?;
    Ok((target.to_string(), runner, memory_x.to_string()))
}

/// The one `[[bin]]` of a board's Cargo.toml.
pub fn parse_bin(text: &str) -> Result<String> {
    let t = parse_toml(text)?;
    match t
        .get("bin")
        .and_then(toml::Value::as_array)
        .map(Vec::as_slice)
    {
        Some([b]) => b
            .get("name")
            .and_then(toml::Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("its [[bin]] has no name")),
        _ => bail!("a board's crate has exactly one [[bin]]"),
    }
}

pub fn board(name: &str) -> Result<Board> {
    BOARDS
        .iter()
        .find(|b| b.name.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            let names: Vec<&str> = BOARDS.iter().map(|b| b.name).collect();
            anyhow!("unknown board {name:?} (known: {})", names.join(", "))
        })
}

/// The firmware sources: `--firmware-dir`, `$ENIGMA_FIRMWARE_DIR`, or the repository's `firmware/`.
pub fn firmware_dir(arg: Option<&Path>) -> Result<PathBuf> {
    let dir = match arg {
        Some(d) => d.to_path_buf(),
        None => match std::env::var_os("ENIGMA_FIRMWARE_DIR") {
            Some(d) => PathBuf::from(d),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../firmware"),
        },
    };
    if !dir.join("Cargo.toml").is_file() || !dir.join("boards").is_dir() {
        bail!(
            "the firmware sources are not at {} (pass --firmware-dir or set ENIGMA_FIRMWARE_DIR)",
            dir.display()
        );
    }
    dir.canonicalize()
        .with_context(|| format!("{}", dir.display()))
}

include!("../../../firmware/memory_x.rs");

impl Region {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.origin && addr < self.origin + self.length
    }
}

/// What an ELF image takes: flash (everything loaded from it) and statically allocated RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageSize {
    pub flash: u64,
    pub ram: u64,
}

/// A little-endian ELF32 file: its sections and symbols (all `enigma flash` needs from it).
pub struct Elf {
    bytes: Vec<u8>,
    sections: Vec<Section>,
}

#[derive(Clone, Copy, Debug)]
struct Section {
    kind: u32,
    flags: u32,
    addr: u32,
    offset: u32,
    size: u32,
    link: u32,
}

const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
const SHF_ALLOC: u32 = 2;
const PT_LOAD: u32 = 1;

impl Elf {
    pub fn parse(bytes: Vec<u8>) -> Result<Elf> {
        if bytes.len() < 52 || &bytes[..4] != b"\x7fELF" || bytes[4] != 1 || bytes[5] != 1 {
            bail!("not a little-endian 32-bit ELF file");
        }
        let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let shoff = u32_at(&bytes, 0x20)? as usize;
        let shentsize = u16_at(&bytes, 0x2e) as usize;
        let shnum = u16_at(&bytes, 0x30) as usize;
        let mut sections = Vec::with_capacity(shnum);
        for i in 0..shnum {
            let at = shoff + i * shentsize;
            let f = |o: usize| u32_at(&bytes, at + o);
            sections.push(Section {
                kind: f(4)?,
                flags: f(8)?,
                addr: f(12)?,
                offset: f(16)?,
                size: f(20)?,
                link: f(24)?,
            });
        }
        let elf = Elf { bytes, sections };
        Ok(elf)
    }

    pub fn read(path: &Path) -> Result<Elf> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Elf::parse(bytes).with_context(|| format!("{}", path.display()))
    }

    fn data(&self, s: &Section) -> Result<&[u8]> {
        let (a, n) = (s.offset as usize, s.size as usize);
        self.bytes
            .get(a..a + n)
            .ok_or_else(|| anyhow!("a section runs past the end of the file"))
    }

    /// The address of symbol `name` (the Thumb bit cleared).
    pub fn symbol(&self, name: &str) -> Result<Option<u64>> {
        for s in self.sections.iter().filter(|s| s.kind == SHT_SYMTAB) {
            let strtab = self
                .sections
                .get(s.link as usize)
                .ok_or_else(|| anyhow!("bad symbol table"))?;
            let strs = self.data(strtab)?;
            for sym in self.data(s)?.chunks_exact(16) {
                let n = u32_at(sym, 0)? as usize;
                let end = strs[n.min(strs.len())..]
                    .iter()
                    .position(|&c| c == 0)
                    .map_or(strs.len(), |e| n + e);
                if strs.get(n..end) == Some(name.as_bytes()) {
                    return Ok(Some((u32_at(sym, 4)? & !1) as u64));
                }
            }
        }
        Ok(None)
    }

    /// Flash: every allocated section with contents (code, constants, the model, `.data`'s initial values);
    /// RAM: every allocated section placed in `ram` (`.data`, `.bss`, `.uninit`).
    pub fn size(&self, ram: Region) -> ImageSize {
        let mut size = ImageSize::default();
        for s in self.sections.iter().filter(|s| s.flags & SHF_ALLOC != 0) {
            if s.kind != SHT_NOBITS {
                size.flash += s.size as u64;
            }
            if ram.contains(s.addr as u64) {
                size.ram += s.size as u64;
            }
        }
        size
    }

    /// The bytes loaded into flash at their addresses: `(address, bytes)` of each PT_LOAD segment with data.
    pub fn flash_segments(&self) -> Result<Vec<(u64, &[u8])>> {
        let b = &self.bytes;
        let phoff = u32_at(b, 0x1c)? as usize;
        let phentsize = u16::from_le_bytes([b[0x2a], b[0x2b]]) as usize;
        let phnum = u16::from_le_bytes([b[0x2c], b[0x2d]]) as usize;
        let mut out = Vec::new();
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let f = |o: usize| u32_at(b, at + o);
            let (kind, offset, paddr, filesz) = (f(0)?, f(4)?, f(12)?, f(16)?);
            if kind != PT_LOAD || filesz == 0 {
                continue;
            }
            let data = b
                .get(offset as usize..(offset + filesz) as usize)
                .ok_or_else(|| anyhow!("a segment runs past the end of the file"))?;
            out.push((paddr as u64, data));
        }
        Ok(out)
    }
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| anyhow!("truncated ELF file"))
}

/// A UF2 file (the RP2040 boot ROM's drag-and-drop format) of the image's flash contents: 256-byte
/// payloads in 512-byte blocks.
pub fn uf2(segments: &[(u64, &[u8])], family: u32) -> Vec<u8> {
    let mut pages: std::collections::BTreeMap<u64, [u8; 256]> = Default::default();
    for &(addr, data) in segments {
        for (i, &byte) in data.iter().enumerate() {
            let a = addr + i as u64;
            pages.entry(a & !255).or_insert([0; 256])[(a & 255) as usize] = byte;
        }
    }
    let total = pages.len() as u32;
    let mut out = Vec::with_capacity(pages.len() * 512);
    for (n, (addr, page)) in pages.iter().enumerate() {
        let mut block = [0u8; 512];
        let words = [
            0x0A32_4655,
            0x9E5D_5157,
            0x0000_2000, // family id present
            *addr as u32,
            256,
            n as u32,
            total,
            family,
        ];
        for (i, w) in words.iter().enumerate() {
            block[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        block[32..32 + 256].copy_from_slice(page);
        block[508..512].copy_from_slice(&0x0AB1_6F30u32.to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn pct(used: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * used as f64 / of as f64
    }
}

/// Settings the firmware's build.rs reads.
fn build_env(args: &FlashArgs, model: &Path, seed: u64) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("ENIGMA_MODEL", model.display().to_string()),
        ("ENIGMA_PROMPT", args.prompt.clone()),
        ("ENIGMA_STEPS", args.n_predict.to_string()),
        ("ENIGMA_TEMPERATURE", args.temperature.to_string()),
        ("ENIGMA_TOP_P", args.top_p.to_string()),
        ("ENIGMA_TOP_K", args.top_k.to_string()),
        ("ENIGMA_REPEAT_PENALTY", args.repeat_penalty.to_string()),
        ("ENIGMA_REPEAT_LAST_N", args.repeat_last_n.to_string()),
        ("ENIGMA_SEED", seed.to_string()),
    ];
    env.push((
        "ENIGMA_CTX",
        args.context.map(|c| c.to_string()).unwrap_or_default(),
    ));
    env.push(("ENIGMA_KERNELS", args.kernels.clone().unwrap_or_default()));
    env
}

/// Runs cargo in the board's folder; stderr is passed through, and on failure the build script's and the
/// linker's own lines become the error.
fn cargo_build(
    fw: &Path,
    board: &Board,
    krate: &BoardCrate,
    memory_x: &Path,
    env: &[(&str, String)],
) -> Result<PathBuf> {
    let dir = fw.join("boards").join(board.dir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--bin", &krate.bin])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // A cargo (or test) that started us leaves settings that would build for the wrong target or place;
    // the user's own cargo settings (home, network, registries, profiles, terminal) pass through.
    const KEEP: [&str; 7] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTR",
        "CARGO_PROFILE_",
        "CARGO_TERM_",
        "CARGO_INCREMENTAL",
    ];
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let cargo_own = k.starts_with("CARGO_") && !KEEP.iter().any(|p| k.starts_with(p));
        if cargo_own || k == "RUSTFLAGS" || k == "RUSTDOCFLAGS" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.env("CARGO_TARGET_DIR", fw.join("target"));
    cmd.env("ENIGMA_MEMORY_X", memory_x);
    cmd.env("ENIGMA_BOARD", board.name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .context("cannot run cargo to build the firmware")?;
    let mut reasons = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.unwrap_or_default();
            eprintln!("{line}");
            let t = line.trim_start();
            if let Some(r) = t.strip_prefix("error: ") {
                // The build script's own lines (cargo indents them); not cargo's summary lines.
                if line.starts_with("  ") {
                    reasons.push(r.to_string());
                }
            } else if t.contains("overflowed by") || t.contains("will not fit in region") {
                reasons.push(t.trim_start_matches("rust-lld: error: ").to_string());
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        if reasons.is_empty() {
            bail!(
                "building the firmware for {} failed (cargo's output is above)",
                board.name
            );
        }
        bail!(
            "building the firmware for {} failed: {}",
            board.name,
            reasons.join(" ")
        );
    }
    Ok(fw
        .join("target")
        .join(&krate.target)
        .join("release")
        .join(&krate.bin))
}

/// A model larger than the board's whole flash cannot fit whatever the code takes: refused before a build
/// (the firmware's build.rs checks the exact budget, code included, when it is closer).
fn check_fits_flash(model: &Path, len: u64, board: &Board, flash: Region) -> Result<()> {
    use enigma_runtime::hardware::human_bytes;
    if len > flash.length {
        bail!(
            "{} does not fit the flash of {}: the model alone is {} and the board has {} of flash, over by {}; \
             quantize it (enigma quantize {} -o smaller.enigma --to q8_0, or q4_0) or choose a board with more flash",
            model.display(),
            board.name,
            human_bytes(len),
            human_bytes(flash.length),
            human_bytes(len - flash.length),
            model.display()
        );
    }
    Ok(())
}

/// The Rust target and the tools a board needs, checked before a build that would otherwise fail after
/// minutes with a compiler error, each with the command that installs it.
fn check_tools(fw: &Path, board: &Board, krate: &BoardCrate, build_only: bool) -> Result<()> {
    let target = &krate.target;
    let dir = fw.join("boards").join(board.dir);
    if let Some(rustup) = which("rustup") {
        // Run in the board's folder, so a toolchain pinned there is the one asked.
        let listed = Command::new(rustup)
            .args(["target", "list", "--installed"])
            .current_dir(&dir)
            .stderr(Stdio::null())
            .output();
        // A rustup that cannot answer (no default toolchain, say) leaves it to cargo to say what is wrong.
        if let Some(out) = listed.ok().filter(|o| o.status.success()) {
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.lines().any(|l| l.trim() == target) {
                bail!(
                    "the Rust target {target} is not installed (the {} firmware is built for it): run `rustup target add {target}`",
                    board.name
                );
            }
        }
    } else if let Some(rustc) = which("rustc") {
        let libdir = Command::new(rustc)
            .args(["--print", "target-libdir", "--target", target])
            .current_dir(&dir)
            .stderr(Stdio::null())
            .output();
        if let Some(out) = libdir.ok().filter(|o| o.status.success()) {
            let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if !libdir.is_dir() {
                bail!(
                    "the Rust standard library for {target} is not installed ({} is missing; the {} firmware is built for it): \
                     install it with your Rust distribution, or with rustup: `rustup target add {target}`",
                    libdir.display(),
                    board.name
                );
            }
        }
    }
    if build_only {
        return Ok(());
    }
    match &krate.runner {
        Runner::Qemu { .. } if which("qemu-system-arm").is_none() => bail!(
            "qemu-system-arm is not installed (it runs the {} image): run `sudo apt-get install qemu-system-arm` \
             (Debian/Ubuntu; `brew install qemu` on macOS), or pass --build-only to build the image alone",
            board.name
        ),
        Runner::Probe { .. } if which("probe-rs").is_none() => {
            // Not an error: the image (and for the Pico its UF2) is still what a board is flashed from.
            eprintln!(
                "note: probe-rs is not installed (cargo install probe-rs-tools --locked), so the image will be built but not flashed"
            );
        }
        _ => {}
    }
    Ok(())
}

/// What `flash` built: the image, its size and the board's budget.
pub struct Built {
    pub elf: PathBuf,
    /// How the image runs: QEMU or probe-rs, from the board's crate.
    pub runner: Runner,
    pub size: ImageSize,
    pub flash: Region,
    pub ram: Region,
}

/// Builds the image for `args.board` with the model embedded and copies it to the output folder.
pub fn build(args: &FlashArgs, board: &Board, seed: u64) -> Result<Built> {
    let model = args
        .model
        .canonicalize()
        .with_context(|| format!("cannot open {}", args.model.display()))?;
    // Validate on the host first: a clear error before a cross build.
    let file = enigma_runtime::ModelFile::open(&model)?;
    let c = *file.parse()?.config();
    let fw = firmware_dir(args.firmware_dir.as_deref())?;
    let krate = board.read_crate(&fw)?;
    let memory_x = fw
        .join("boards")
        .join(board.dir)
        .join(board.memory_x.unwrap_or(&krate.memory_x));
    let text = std::fs::read_to_string(&memory_x)
        .with_context(|| format!("cannot read {}", memory_x.display()))?;
    let region = |name| {
        memory_region(&text, name)
            .ok_or_else(|| anyhow!("{}: no {name} region", memory_x.display()))
    };
    let (flash, ram) = (region("FLASH")?, region("RAM")?);
    check_fits_flash(&args.model, file.bytes().len() as u64, board, flash)?;
    check_tools(&fw, board, &krate, args.build_only)?;
    eprintln!(
        "building the firmware for {} ({}) with {} ({} bytes; dim {}, {} layers, vocab {}, context {})",
        board.name,
        board.about,
        model.display(),
        file.bytes().len(),
        c.dim,
        c.n_layers,
        c.vocab_size,
        c.seq_len
    );
    let built = cargo_build(
        &fw,
        board,
        &krate,
        &memory_x,
        &build_env(args, &model, seed),
    )?;
    let out_dir = args
        .out_dir
        .clone()
        .unwrap_or_else(|| fw.join("target").join("images").join(board.name));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let elf_path = out_dir.join(format!("{}.elf", board.name));
    std::fs::copy(&built, &elf_path)
        .with_context(|| format!("cannot copy {} to {}", built.display(), elf_path.display()))?;
    let size = Elf::read(&elf_path)?.size(ram);
    let model_len = file.bytes().len() as u64;
    eprintln!("image: {}", elf_path.display());
    eprintln!(
        "flash: {} of {} bytes ({:.1}%): model {model_len}, code and constants {}",
        size.flash,
        flash.length,
        pct(size.flash, flash.length),
        size.flash.saturating_sub(model_len)
    );
    eprintln!(
        "RAM:   {} of {} bytes ({:.1}%) in static buffers; the stack has the other {} bytes",
        size.ram,
        ram.length,
        pct(size.ram, ram.length),
        ram.length.saturating_sub(size.ram)
    );
    Ok(Built {
        elf: elf_path,
        runner: krate.runner,
        size,
        flash,
        ram,
    })
}

pub fn flash(args: FlashArgs) -> Result<()> {
    let board = board(&args.board)?;
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!(
            "--temperature must be a number >= 0, not {}",
            args.temperature
        );
    }
    if !(0.0..=1.0).contains(&args.top_p) {
        bail!("--top-p must be between 0 and 1, not {}", args.top_p);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let built = build(&args, &board, seed)?;
    if args.build_only {
        return Ok(());
    }
    match &built.runner {
        Runner::Qemu { machine, cpu } => run_qemu(&args, &built, machine, cpu),
        Runner::Probe { .. } if args.serve.is_some() => bail!(
            "--serve is for QEMU boards; a real board's console is its serial port: `enigma chat --port /dev/ttyACM0`"
        ),
        Runner::Probe { chip } => flash_probe(&board, &built, chip),
    }
}

fn run_qemu(args: &FlashArgs, built: &Built, machine: &str, cpu: &str) -> Result<()> {
    let dir = built
        .elf
        .parent()
        .ok_or_else(|| anyhow!("the image has no folder"))?;
    let log = dir.join("defmt.log");
    let _ = std::fs::remove_file(&log);
    let plugin_log = dir.join("insn.log");
    let mut cmd = Command::new("qemu-system-arm");
    let console = match &args.serve {
        // wait=off: the board boots at once; what it writes before a client connects is dropped, and what
        // a client writes waits in the socket until the emulated UART takes it.
        Some(path) => {
            let _ = std::fs::remove_file(path);
            format!("unix:{},server=on,wait=off", path.display())
        }
        None => "stdio".to_string(),
    };
    cmd.args(["-machine", machine, "-cpu", cpu, "-display", "none"])
        .args(["-monitor", "none", "-serial"])
        .arg(console)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .args(["-semihosting-config", "enable=on,target=native"]);
    let elf = Elf::read(&built.elf)?;
    if let Some(plugin) = &args.insn_plugin {
        let mark = elf.symbol("perf_mark")?.ok_or_else(|| {
            anyhow!("the image has no perf_mark symbol to count instructions between")
        })?;
        let plugin = plugin
            .canonicalize()
            .with_context(|| format!("cannot open {}", plugin.display()))?;
        let _ = std::fs::remove_file(&plugin_log);
        cmd.arg("-plugin")
            .arg(format!("{},mark={mark:#x}", plugin.display()))
            .args(["-d", "plugin", "-D"])
            .arg(&plugin_log);
    }
    cmd.arg("-kernel").arg(&built.elf);
    let interactive = args.prompt.is_empty();
    cmd.stdin(if interactive && args.serve.is_none() {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    let limit = match args.timeout {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None if interactive => None,
        None => Some(Duration::from_secs(600)),
    };
    match &args.serve {
        Some(path) => eprintln!(
            "booting it in QEMU ({machine}, {cpu}); its console is the socket {0}: `enigma chat --port {0}`",
            path.display()
        ),
        None => eprintln!("booting it in QEMU ({machine}, {cpu}); the console follows on stdout"),
    }
    let mut child = cmd.spawn().context("cannot start qemu-system-arm")?;
    let start = Instant::now();
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait().context("waiting for QEMU")? {
            break s;
        }
        if limit.is_some_and(|l| start.elapsed() > l) {
            let _ = child.kill();
            let _ = child.wait();
            decode_log(&built.elf, &log);
            bail!(
                "the firmware did not finish within {} s (--timeout)",
                limit.unwrap_or_default().as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    decode_log(&built.elf, &log);
    if args.insn_plugin.is_some() {
        report_instructions(&plugin_log, &args.model)?;
    }
    if !status.success() {
        let why = match status.code() {
            Some(101) => "it panicked".to_string(),
            Some(102) => "it hit a hard fault".to_string(),
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_string(),
        };
        bail!(
            "the firmware failed under QEMU ({why}); its defmt log: {}",
            log.display()
        );
    }
    Ok(())
}

/// Prints the firmware's defmt log to stderr, decoded by defmt-print when it is installed.
fn decode_log(elf: &Path, log: &Path) {
    let len = std::fs::metadata(log).map_or(0, |m| m.len());
    if len == 0 {
        return;
    }
    let Some(defmt_print) = which("defmt-print") else {
        eprintln!(
            "defmt log: {} ({len} bytes); install defmt-print (cargo install defmt-print) to decode it here",
            log.display()
        );
        return;
    };
    let decoded = std::fs::File::open(log).and_then(|f| {
        Command::new(defmt_print)
            .arg("-e")
            .arg(elf)
            .stdin(f)
            .stderr(Stdio::inherit())
            .output()
    });
    match decoded {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                eprintln!("[firmware] {line}");
            }
        }
        Err(e) => eprintln!("cannot run defmt-print: {e}"),
    }
}

/// Instructions between successive generated tokens, from the TCG plugin's `insn_mark N delta=D` lines.
pub fn token_deltas(plugin_log: &str) -> Vec<u64> {
    plugin_log
        .lines()
        .filter_map(|l| l.strip_prefix("insn_mark "))
        .filter_map(|l| l.split("delta=").nth(1)?.trim().parse().ok())
        .collect()
}

fn report_instructions(plugin_log: &Path, model: &Path) -> Result<()> {
    let text = std::fs::read_to_string(plugin_log)
        .with_context(|| format!("cannot read the plugin's log {}", plugin_log.display()))?;
    let deltas = token_deltas(&text);
    // The first mark also counts boot and the prompt; each later one is exactly one token.
    let per_token = deltas.get(1..).unwrap_or(&[]);
    if per_token.is_empty() {
        bail!("the instruction counter saw fewer than two generated tokens");
    }
    let mean = per_token.iter().sum::<u64>() as f64 / per_token.len() as f64;
    let (min, max) = (
        per_token.iter().min().copied().unwrap_or(0),
        per_token.iter().max().copied().unwrap_or(0),
    );
    let name = model.file_name().unwrap_or_default().to_string_lossy();
    eprintln!(
        "instructions per generated token ({name}, {} tokens): mean {mean:.0}, min {min}, max {max}; \
         boot + prompt + first token: {}",
        per_token.len(),
        deltas[0]
    );
    eprintln!(
        "estimated MCU speed at 100 MHz and 1 instruction per cycle: {:.1} tok/s \
         (an estimate: a real Cortex-M4 takes more than one cycle for loads, multiplies and branches, \
         and flash wait states add more)",
        100e6 / mean
    );
    eprintln!("insn_per_token {name} {mean:.0}");
    Ok(())
}

fn flash_probe(board: &Board, built: &Built, chip: &str) -> Result<()> {
    if let Some(family) = board.uf2_family {
        let elf = Elf::read(&built.elf)?;
        let segments: Vec<(u64, &[u8])> = elf
            .flash_segments()?
            .into_iter()
            .filter(|(a, _)| !built.ram.contains(*a))
            .collect();
        let path = built.elf.with_extension("uf2");
        enigma_runtime::fsutil::atomic_write(&path, &uf2(&segments, family))?;
        eprintln!(
            "UF2: {} (hold BOOTSEL, plug the board in, copy this file to the RPI-RP2 drive)",
            path.display()
        );
    }
    let Some(probe_rs) = which("probe-rs") else {
        eprintln!(
            "probe-rs is not installed, so the image was not flashed. Install it (cargo install probe-rs-tools \
             --locked, about 11 minutes to build), connect the board's debug probe, then run:\n  \
             probe-rs download --chip {chip} {}\n  probe-rs reset --chip {chip}",
            built.elf.display()
        );
        return Ok(());
    };
    eprintln!("flashing {} with probe-rs ({chip})", built.elf.display());
    let ok = Command::new(&probe_rs)
        .args(["download", "--chip", chip])
        .arg(&built.elf)
        .status()
        .context("cannot run probe-rs")?
        .success()
        && Command::new(&probe_rs)
            .args(["reset", "--chip", chip])
            .status()
            .context("cannot run probe-rs")?
            .success();
    if !ok {
        bail!(
            "probe-rs could not flash the board (is its probe connected?); the image is {}",
            built.elf.display()
        );
    }
    eprintln!(
        "flashed. The console is the board's UART at 115200 baud; defmt logs: probe-rs attach --chip {chip} {}",
        built.elf.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_x_regions_parse() {
        let text = "MEMORY {\n  BOOT2 : ORIGIN = 0x10000000, LENGTH = 0x100\n  FLASH : ORIGIN = 0x10000100, LENGTH = 2048K - 0x100 /* c */\n  RAM : ORIGIN = 0x20000000, LENGTH = 256K\n}";
        assert_eq!(
            memory_region(text, "FLASH"),
            Some(Region {
                origin: 0x1000_0100,
                length: 2048 * 1024 - 256
            })
        );
        assert_eq!(
            memory_region(text, "RAM").map(|r| r.length),
            Some(256 * 1024)
        );
        assert_eq!(memory_region(text, "BOOT2").map(|r| r.length), Some(256));
        assert_eq!(memory_region(text, "ROM"), None);
    }

    #[test]
    fn every_board_crate_states_its_target_runner_bin_and_memory_x() {
        let fw = firmware_dir(None).unwrap();
        for b in BOARDS {
            let k = b
                .read_crate(&fw)
                .unwrap_or_else(|e| panic!("{}: {e:#}", b.name));
            assert!(k.target.starts_with("thumbv"), "{}: {}", b.name, k.target);
            assert_eq!(k.bin, b.dir, "{}", b.name);
            let memory_x = b.memory_x.unwrap_or(&k.memory_x);
            let text =
                std::fs::read_to_string(fw.join("boards").join(b.dir).join(memory_x)).unwrap();
            assert!(memory_region(&text, "FLASH").is_some(), "{}", b.name);
            assert!(memory_region(&text, "RAM").is_some(), "{}", b.name);
            // A UF2 is for copying to a real board, never for QEMU.
            if b.uf2_family.is_some() {
                assert!(matches!(k.runner, Runner::Probe { .. }), "{}", b.name);
            }
        }
    }

    #[test]
    fn runners_give_the_qemu_machine_or_the_probe_chip() {
        let qemu = r#"
[build]
target = "thumbv7em-none-eabihf"
[target.thumbv7em-none-eabihf]
runner = "qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -display none -kernel"
[env]
ENIGMA_MEMORY_X = { value = "memory.x", relative = true }
"#;
        assert_eq!(
            parse_cargo_config(qemu).unwrap(),
            (
                "thumbv7em-none-eabihf".to_string(),
                Runner::Qemu {
                    machine: "mps2-an386".into(),
                    cpu: "cortex-m4".into()
                },
                "memory.x".to_string()
            )
        );
        let probe = r#"
build.target = "thumbv6m-none-eabi"
target.thumbv6m-none-eabi.runner = ["probe-rs", "run", "--chip", "RP2040"]
env.ENIGMA_MEMORY_X = "m.x"
"#;
        let (target, runner, memory_x) = parse_cargo_config(probe).unwrap();
        assert_eq!(target, "thumbv6m-none-eabi");
        assert_eq!(
            runner,
            Runner::Probe {
                chip: "RP2040".into()
            }
        );
        assert_eq!(memory_x, "m.x");
        for (bad, why) in [
            (
                "[build]\ntarget = \"t\"\n[env]\nENIGMA_MEMORY_X = \"m\"",
                "no runner",
            ),
            (
                "[build]\ntarget = \"t\"\n[target.t]\nrunner = \"gdb\"",
                "neither",
            ),
            (
                "[build]\ntarget = \"t\"\n[target.t]\nrunner = \"probe-rs run\"",
                "no --chip",
            ),
            ("[target.t]\nrunner = \"probe-rs\"", "no [build] target"),
            ("[build", "not valid TOML"),
        ] {
            let err = format!("{:#}", parse_cargo_config(bad).unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(
            parse_bin("[[bin]]\nname = \"rp-pico\"\npath = \"src/main.rs\"").unwrap(),
            "rp-pico"
        );
        assert!(parse_bin("[package]\nname = \"x\"").is_err());
    }

    #[test]
    fn uf2_blocks_are_well_formed() {
        let data = vec![7u8; 300];
        let out = uf2(&[(0x1000_0000, &data)], 0xe48b_ff56);
        assert_eq!(out.len(), 2 * 512);
        let w = |b: &[u8], i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(w(&out, 0), 0x0A32_4655);
        assert_eq!(w(&out, 3), 0x1000_0000);
        assert_eq!(w(&out[512..], 3), 0x1000_0100);
        assert_eq!(w(&out[512..], 5), 1);
        assert_eq!(w(&out, 6), 2);
        assert_eq!(w(&out, 7), 0xe48b_ff56);
        assert_eq!(out[32 + 255], 7);
        assert_eq!(out[512 + 32 + 43], 7);
        assert_eq!(out[512 + 32 + 44], 0);
        assert_eq!(&out[508..512], &0x0AB1_6F30u32.to_le_bytes());
    }

    #[test]
    fn plugin_lines_become_deltas() {
        let log = "insn_mark 0 delta=900\ninsn_mark 1 delta=120\nother\ninsn_mark 2 delta=130\ninsn_total 5\n";
        assert_eq!(token_deltas(log), vec![900, 120, 130]);
    }
}
