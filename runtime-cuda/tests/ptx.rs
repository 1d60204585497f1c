//! Every `.cu` file of `kernels/cuda` compiles through NVRTC to PTX for compute_80 and compute_90, and `ptxas`
//! assembles that PTX for sm_80 and sm_90 with no errors and no register spills; the registers of every kernel
//! are printed. No GPU is needed: NVRTC and ptxas come from the pip packages `nvidia-cuda-nvrtc-cu12` and
//! `nvidia-cuda-nvcc-cu12` (.ci/run installs them), found through python3's site-packages, or from
//! `ENIGMA_NVRTC_LIB` (the folder of libnvrtc.so.12) and `ENIGMA_PTXAS`.

use enigma_cuda::{compile, kernel_names, Arch, SOURCES};
use enigma_testkit::skip_or_fail;
use std::path::PathBuf;
use std::process::Command;

const TEST: &str = "every_kernel_compiles_for_sm80_and_sm90_without_spills";
/// Set in the child this test starts with NVRTC's folder on LD_LIBRARY_PATH (the dynamic loader reads that
/// variable once, at process start).
const CHILD: &str = "ENIGMA_PTX_TEST_CHILD";

/// python3's site-packages `nvidia/` folder, where the pip CUDA packages put their files.
fn pip_nvidia() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nvidia");
    dir.is_dir().then_some(dir)
}

fn nvrtc_dir() -> Option<PathBuf> {
    std::env::var_os("ENIGMA_NVRTC_LIB")
        .map(PathBuf::from)
        .or_else(|| pip_nvidia().map(|d| d.join("cuda_nvrtc").join("lib")))
        .filter(|d| d.join("libnvrtc.so.12").is_file())
}

fn ptxas() -> Option<PathBuf> {
    std::env::var_os("ENIGMA_PTXAS")
        .map(PathBuf::from)
        .or_else(|| pip_nvidia().map(|d| d.join("cuda_nvcc").join("bin").join("ptxas")))
        .filter(|p| p.is_file())
}

/// One kernel's line of `ptxas -v`: name, registers, spill stores and loads.
#[derive(Debug, PartialEq)]
struct Usage {
    kernel: String,
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
}

/// Reads `ptxas -v`'s report: "Compiling entry function 'k'", then "N bytes spill stores, M bytes spill
/// loads" and "Used R registers" for it.
fn parse_ptxas(report: &str) -> Vec<Usage> {
    let mut out: Vec<Usage> = Vec::new();
    let number_before = |line: &str, word: &str| -> Option<u32> {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(Usage {
                kernel,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
            });
        } else if let Some(u) = out.last_mut() {
            if let Some(n) = number_before(line, "bytes spill stores") {
                u.spill_stores = n;
                u.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            }
            if let Some(n) = number_before(line, "registers") {
                u.registers = n;
            }
        }
    }
    out
}

#[test]
fn ptxas_reports_are_read() {
    let report = "ptxas info    : Compiling entry function 'matvec_f16_b3' for 'sm_90'\n\
        ptxas info    : Function properties for matvec_f16_b3\n\
        \x20   8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n\
        ptxas info    : Used 40 registers, used 0 barriers, 8 bytes cumulative stack size\n\
        ptxas info    : Compiling entry function 'add' for 'sm_90'\n\
        ptxas info    : Used 8 registers, used 0 barriers\n";
    assert_eq!(
        parse_ptxas(report),
        vec![
            Usage {
                kernel: "matvec_f16_b3".into(),
                registers: 40,
                spill_stores: 12,
                spill_loads: 16
            },
            Usage {
                kernel: "add".into(),
                registers: 8,
                spill_stores: 0,
                spill_loads: 0
            },
        ]
    );
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_spills() {
    let Some(ptxas) = ptxas() else {
        return skip_or_fail(
            TEST,
            "ptxas was not found (pip install nvidia-cuda-nvcc-cu12==12.9.86, or set ENIGMA_PTXAS)",
        );
    };
    // SAFETY: only tries to open libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        let Some(dir) = nvrtc_dir().filter(|_| std::env::var_os(CHILD).is_none()) else {
            return skip_or_fail(
                TEST,
                "NVRTC (libnvrtc.so.12) was not found (pip install nvidia-cuda-nvrtc-cu12==12.9.86, or set ENIGMA_NVRTC_LIB)",
            );
        };
        // Again, in a child process that can load it.
        let path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        let exe = std::env::current_exe().expect("the test binary's path");
        let out = Command::new(exe)
            .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env("LD_LIBRARY_PATH", format!("{}:{path}", dir.display()))
            .output()
            .expect("starting the test binary again");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "the run with NVRTC on LD_LIBRARY_PATH failed"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("kernels assembled"),
            "the child run did not reach ptxas"
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let dir = tmp.path();
    let mut total = 0;
    for (file, _) in SOURCES {
        for (arch, sm) in [(Arch::SM80, "sm_80"), (Arch::SM90, "sm_90")] {
            let ptx = compile(file, arch).unwrap_or_else(|e| panic!("{e}"));
            for name in kernel_names(file) {
                assert!(
                    ptx.contains(&format!(".entry {name}(")),
                    "{file}: the launchers call {name}, which the PTX for {} lacks",
                    arch.name()
                );
            }
            let path = dir.join(format!("{file}.{sm}.ptx"));
            std::fs::write(&path, &ptx).expect("writing PTX");
            let out = Command::new(&ptxas)
                .arg(format!("-arch={sm}"))
                .arg("-v")
                .arg(&path)
                .arg("-o")
                .arg(dir.join("out.cubin"))
                .output()
                .expect("running ptxas");
            let report = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "ptxas {sm} {file}:\n{report}");
            let usage = parse_ptxas(&report);
            assert_eq!(
                usage.len(),
                ptx.matches(".entry ").count(),
                "{file} {sm}: a kernel missing from ptxas's report:\n{report}"
            );
            for u in &usage {
                println!(
                    "{sm} {file:<15} {:<16} {:>3} registers",
                    u.kernel, u.registers
                );
                assert!(
                    u.spill_stores == 0 && u.spill_loads == 0,
                    "{sm} {file} {}: {} bytes spill stores, {} bytes spill loads",
                    u.kernel,
                    u.spill_stores,
                    u.spill_loads
                );
                assert!(u.registers > 0, "{sm} {}: no register count", u.kernel);
            }
            total += usage.len();
        }
    }
    println!("{total} kernels assembled for sm_80 and sm_90, none spilling");
}
