//! What this machine has: memory, cores, NVIDIA GPUs and their memory.
//!
//! CUDA is found at run time (cudarc's dynamic loading): a machine or build without the CUDA driver has no
//! GPU, it does not fail to start. Each GPU's memory is read through the driver; free memory needs a context,
//! which is made and released once, during detection.

use serde::{Deserialize, Serialize};

/// One NVIDIA GPU the driver reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub total_vram: u64,
    /// `None` when the driver could not make a context to ask (a GPU in exclusive use, for example).
    pub free_vram: Option<u64>,
}

/// The machine as detected (or as simulated in tests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// Bytes; `None` where the OS would not say.
    pub total_ram: Option<u64>,
    /// Bytes available to a new program without swapping (Linux's MemAvailable).
    pub free_ram: Option<u64>,
    pub cores: usize,
    pub gpus: Vec<Gpu>,
    /// Why there is no GPU, or a driver error met while listing them; `None` when CUDA answered.
    pub cuda_note: Option<String>,
    /// The CUDA driver's version, e.g. "12.4".
    pub cuda_driver: Option<String>,
}

impl Hardware {
    /// Asks the OS and the CUDA driver.
    pub fn detect() -> Hardware {
        let (total_ram, free_ram) = ram();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (gpus, cuda_driver, cuda_note) = match cuda() {
            Ok((gpus, driver)) => {
                let note = gpus
                    .is_empty()
                    .then(|| "the CUDA driver reports no GPU".to_string());
                (gpus, Some(driver), note)
            }
            Err(why) => (Vec::new(), None, Some(why)),
        };
        Hardware {
            total_ram,
            free_ram,
            cores,
            gpus,
            cuda_note,
            cuda_driver,
        }
    }

    /// The most VRAM any one GPU has.
    pub fn max_vram(&self) -> Option<u64> {
        self.gpus.iter().map(|g| g.total_vram).max()
    }
}

/// Bytes as people read them: "512 MiB", "7.6 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else if v >= 100.0 || v.fract() < 0.05 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Refuses, before anything is allocated, work that needs `bytes` of memory when this machine has less
/// available (or an address space too small to hold it): sizes that come from files and flags must end in
/// an error that says so, never in the allocator aborting the process. `what` starts the message.
pub fn ensure_available(bytes: u64, what: &str) -> crate::Result<()> {
    let refuse = |have: String| {
        Err(crate::Error::Invalid(format!(
            "{what} needs about {} of memory and {have}",
            human_bytes(bytes)
        )))
    };
    if usize::try_from(bytes).is_err() || bytes > isize::MAX as u64 {
        return refuse("this machine's address space cannot hold that".into());
    }
    match ram() {
        (_, Some(free)) if bytes > free => refuse(format!("{} is available", human_bytes(free))),
        _ => Ok(()),
    }
}

/// `n` zeroed elements, or an error naming `what` when the allocator cannot provide them (a size that
/// passed [`ensure_available`] can still meet a fragmented or limited address space). Zeroed by the
/// allocator (fresh pages from the OS are zero), not written: a KV pool sized for many sequences occupies
/// memory as its blocks are used, not all at load.
pub fn try_zeroed<T: bytemuck::Zeroable>(n: usize, what: &str) -> crate::Result<Vec<T>> {
    bytemuck::allocation::try_zeroed_vec(n).map_err(|()| {
        crate::Error::Invalid(format!(
            "{what}: cannot allocate {}",
            human_bytes((n as u64).saturating_mul(std::mem::size_of::<T>() as u64))
        ))
    })
}

/// Total and available RAM in bytes from /proc/meminfo (Linux); `None` elsewhere. Cheap: no CUDA.
pub fn ram() -> (Option<u64>, Option<u64>) {
    match std::fs::read_to_string("/proc/meminfo") {
        Ok(text) => parse_meminfo(&text),
        Err(_) => (None, None),
    }
}

fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    (
        field("MemTotal"),
        field("MemAvailable").or(field("MemFree")),
    )
}

/// The GPUs and the driver version, or why there are none: the one device query behind `enigma hardware`,
/// the module manager's VRAM checks and `--device cuda` ([`crate::Backend::cuda`]).
pub(crate) fn cuda() -> Result<(Vec<Gpu>, String), String> {
    // SAFETY: only tries to open the driver library; loading a shared library runs its initialisers, which
    // is what any CUDA program does.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver (libcuda) on this machine".into());
    }
    // cudarc panics, rather than returning an error, when a symbol is missing from an old driver; keep that
    // from taking the process down with it.
    std::panic::catch_unwind(cuda_devices)
        .unwrap_or_else(|_| Err("the CUDA driver library could not be used".into()))
}

fn cuda_devices() -> Result<(Vec<Gpu>, String), String> {
    use cudarc::driver::{result, sys};
    let err = |what: &str, e: result::DriverError| format!("CUDA {what}: {e:?}");
    result::init().map_err(|e| err("init", e))?;
    let mut version = 0i32;
    // SAFETY: a valid out-pointer; the driver was initialised above.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| err("driver version", e))?;
    let driver = format!("{}.{}", version / 1000, (version % 1000) / 10);
    let count = result::device::get_count().map_err(|e| err("device count", e))?;
    let mut gpus = Vec::new();
    for i in 0..count {
        let dev = result::device::get(i).map_err(|e| err("device", e))?;
        let name = result::device::get_name(dev).map_err(|e| err("device name", e))?;
        // SAFETY: `dev` came from `device::get`.
        let total = unsafe { result::device::total_mem(dev) }.map_err(|e| err("memory", e))?;
        gpus.push(Gpu {
            index: i as u32,
            name,
            total_vram: total as u64,
            free_vram: free_vram(dev),
        });
    }
    Ok((gpus, driver))
}

fn free_vram(dev: cudarc::driver::sys::CUdevice) -> Option<u64> {
    use cudarc::driver::result;
    // SAFETY: `dev` came from `device::get`; the primary context is made current only for the query and
    // released afterwards.
    unsafe {
        let ctx = result::primary_ctx::retain(dev).ok()?;
        let free = result::ctx::set_current(ctx)
            .ok()
            .and_then(|_| result::mem_get_info().ok())
            .map(|(free, _total)| free as u64);
        let _ = result::primary_ctx::release(dev);
        free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       16314004 kB\nMemFree:          512000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(
            parse_meminfo(text),
            (Some(16314004 * 1024), Some(8000000 * 1024))
        );
        assert_eq!(parse_meminfo("garbage"), (None, None));
        assert_eq!(
            parse_meminfo("MemTotal: 1 kB\nMemFree: 2 kB\n"),
            (Some(1024), Some(2048))
        );
    }

    #[test]
    fn detection_never_panics_and_finds_this_machine() {
        let hw = Hardware::detect();
        assert!(hw.cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(hw.total_ram.is_some_and(|t| t > 0));
            assert!(hw.free_ram <= hw.total_ram);
        }
        // Either CUDA answered, or there is a reason there is no GPU.
        assert!(hw.cuda_driver.is_some() || (hw.gpus.is_empty() && hw.cuda_note.is_some()));
    }

    #[test]
    fn bytes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(6 << 30), "6 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
    }
}
