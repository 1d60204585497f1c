//! Where the forward pass runs, chosen at run time at the edge: model code never names a backend.

use crate::{Error, Result};
use enigma_core::kernels::{kernels_from_env, Kernels};
use enigma_core::{Exec, Serial};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps. Decode calls `split` about a hundred times per token
/// with a few microseconds between calls, so workers stay awake through a whole generation; a waiting chat
/// prompt puts them to sleep.
const SPIN: Duration = Duration::from_millis(2);
/// After this long a spinning thread yields its core between checks, so that on a machine with more runnable
/// threads than cores (other jobs) the thread it waits for gets to run.
const POLITE: Duration = Duration::from_micros(50);

/// Spin-waits for `ready`, yielding after [`POLITE`]; gives up (returns false) after `limit`.
fn spin_until(limit: Option<Duration>, mut ready: impl FnMut() -> bool) -> bool {
    let since = Instant::now();
    let mut spins = 0u32;
    loop {
        if ready() {
            return true;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) {
            std::hint::spin_loop();
            continue;
        }
        let waited = since.elapsed();
        if limit.is_some_and(|l| waited > l) {
            return false;
        }
        if waited > POLITE {
            thread::yield_now();
        }
    }
}

/// Parts per thread in a split: more than one, so that when the OS takes a core away from a worker (other
/// programs running), the threads still running claim its share instead of waiting for it.
const PARTS_PER_THREAD: usize = 2;

/// Threads that split rows and heads: the caller and `threads - 1` workers, woken by an epoch counter they
/// spin on, claim parts of the buffer from a shared counter until none is left.
///
/// Not rayon: a rayon `install` from outside its pool wakes sleeping threads through a queue, which cost
/// tens of microseconds per call and made a 2-thread decode of a 110M model barely faster than one thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One `split` at a time: a concurrent or nested call runs on its own caller's thread instead.
    busy: Mutex<()>,
}

#[derive(Clone, Copy)]
struct Job {
    /// The caller's closure and buffer, lifetimes erased: valid until every part has finished, which the
    /// caller waits for before returning. A part is only run after claiming it for this job's epoch.
    f: *const (dyn Fn(usize, &mut [f32]) + Sync),
    data: *mut f32,
    len: usize,
    unit: usize,
    /// Units per part, and parts.
    per: usize,
    parts: usize,
    epoch: u32,
}

// SAFETY: a `Job` is only dereferenced by a thread that claimed one of its parts, and the `split` call that
// made it waits for every part to finish, so the closure (`Sync`) and the buffer outlive every use; parts are
// disjoint.
unsafe impl Send for Job {}

struct Shared {
    /// `epoch << 32 | next part to claim`: one word, so a claim can never take a part of a newer job.
    state: AtomicU64,
    finished: AtomicUsize,
    sleepers: AtomicUsize,
    stop: AtomicBool,
    panicked: AtomicBool,
    job: Mutex<Option<Job>>,
}

impl Pool {
    pub fn new(threads: usize) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            job: Mutex::new(None),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let sh = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("enigma-{i}"))
                .spawn(move || worker(&sh));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    // Workers already started are stopped by the pool's drop.
                    drop(Pool {
                        shared,
                        workers,
                        busy: Mutex::new(()),
                    });
                    return Err(Error::Invalid(format!(
                        "cannot start {threads} threads: {e}"
                    )));
                }
            }
        }
        Ok(Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        })
    }

    /// The caller's thread and the workers.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    fn wake(&self) {
        if self.shared.sleepers.load(SeqCst) > 0 {
            for w in &self.workers {
                w.thread().unpark();
            }
        }
    }
}

fn epoch_of(state: u64) -> u32 {
    (state >> 32) as u32
}

/// Claims parts of `job` and runs them until none is left (or a newer job has replaced it).
fn run_parts(sh: &Shared, job: &Job) {
    loop {
        let s = sh.state.load(Acquire);
        let i = s as u32 as usize;
        if epoch_of(s) != job.epoch || i >= job.parts {
            return;
        }
        if sh
            .state
            .compare_exchange_weak(s, s + 1, AcqRel, Acquire)
            .is_err()
        {
            continue;
        }
        // `parts = ceil(units / per)`, so every part but the last is whole and the last takes any remainder.
        let start = i * job.per * job.unit;
        let end = if i + 1 == job.parts {
            job.len
        } else {
            start + job.per * job.unit
        };
        // SAFETY: see `Job`: part `i` was claimed for this job's epoch, so its `split` is still waiting and
        // the buffer and closure are alive; no other thread claimed part `i`.
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe {
            let data = std::slice::from_raw_parts_mut(job.data.add(start), end - start);
            (*job.f)(i * job.per, data)
        }));
        if ok.is_err() {
            sh.panicked.store(true, Release);
        }
        sh.finished.fetch_add(1, AcqRel);
    }
}

fn worker(sh: &Shared) {
    let mut seen = 0u32;
    loop {
        loop {
            let woke = spin_until(Some(SPIN), || {
                sh.stop.load(Acquire) || epoch_of(sh.state.load(Acquire)) != seen
            });
            if sh.stop.load(Acquire) {
                return;
            }
            if woke {
                break;
            }
            // Register as asleep, then look again: the caller bumps the epoch before it checks for sleepers,
            // so either it sees this one and unparks it, or this check sees the new epoch.
            sh.sleepers.fetch_add(1, SeqCst);
            if epoch_of(sh.state.load(SeqCst)) == seen && !sh.stop.load(SeqCst) {
                thread::park_timeout(Duration::from_millis(100));
            }
            sh.sleepers.fetch_sub(1, SeqCst);
        }
        seen = epoch_of(sh.state.load(Acquire));
        let job = *sh.job.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = job.filter(|j| j.epoch == seen) {
            run_parts(sh, &job);
        }
    }
}

impl Exec for Pool {
    fn threads(&self) -> usize {
        Pool::threads(self)
    }

    fn split(&self, data: &mut [f32], unit: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
        let units = data.len() / unit.max(1);
        // A panic in an earlier split poisons the lock but leaves nothing half-done: the pool is still usable.
        let _busy = match self.busy.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return f(0, data),
        };
        if units < 2 || self.workers.is_empty() {
            return f(0, data);
        }
        let sh = &*self.shared;
        // Rows of one matrix cost the same, so even parts are enough.
        let per = units.div_ceil((self.threads() * PARTS_PER_THREAD).min(units));
        let job = Job {
            // SAFETY: only the lifetime is erased; see `Job`.
            f: unsafe {
                std::mem::transmute::<
                    &(dyn Fn(usize, &mut [f32]) + Sync),
                    &'static (dyn Fn(usize, &mut [f32]) + Sync),
                >(f)
            },
            data: data.as_mut_ptr(),
            len: data.len(),
            unit: unit.max(1),
            per,
            parts: units.div_ceil(per),
            epoch: epoch_of(sh.state.load(Acquire)).wrapping_add(1),
        };
        *sh.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
        sh.finished.store(0, Release);
        sh.state.store(u64::from(job.epoch) << 32, SeqCst);
        self.wake();
        run_parts(sh, &job);
        // Parts claimed by workers still use `data` and `f`: wait for all of them, even after a panic.
        spin_until(None, || sh.finished.load(Acquire) >= job.parts);
        *sh.job.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if sh.panicked.swap(false, AcqRel) {
            panic!("a part of a split panicked (its message is printed above)");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Where to run: `cpu`, or `cuda` / `cuda:N` (GPU N, counted as `enigma hardware` lists them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device {s:?} (cpu, cuda or cuda:N)")),
        }
    }
}

/// The CPU backend, or a GPU. The GPU variant's type is uninhabited in builds without the `cuda` feature
/// ([`crate::device`]), so every `match` here is the same in both builds and no caller carries `cfg`.
pub enum Backend {
    Cpu {
        kernels: &'static Kernels,
        pool: Option<Pool>,
    },
    /// The host-side work (tokenizing, host sampling) still uses the CPU kernels.
    Cuda {
        gpu: crate::device::Gpu,
        kernels: &'static Kernels,
    },
}

impl Backend {
    /// The backend `device` names; `threads` is for the CPU.
    pub fn open(device: Device, threads: Option<usize>) -> Result<Self> {
        match device {
            Device::Cpu => Self::cpu(threads),
            Device::Cuda(n) => Self::cuda(n),
        }
    }

    /// The CPU with `threads` threads (all cores when `None`), using the kernel tier `ENIGMA_KERNELS` names
    /// or the best this CPU supports.
    pub fn cpu(threads: Option<usize>) -> Result<Self> {
        let kernels = kernels_from_env().map_err(Error::Kernels)?;
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if threads == 0 {
            return Err(Error::Invalid("--threads must be at least 1".into()));
        }
        let pool = if threads > 1 {
            Some(Pool::new(threads)?)
        } else {
            None
        };
        Ok(Backend::Cpu { kernels, pool })
    }

    /// GPU `device`. Fails with one line when this build has no CUDA backend, or the machine no driver or no
    /// such GPU (found by the same query as `enigma hardware`), before cudarc is asked anything that could
    /// panic.
    pub fn cuda(device: usize) -> Result<Self> {
        if !crate::device::COMPILED {
            return Err(Error::NoCuda(
                "--device cuda: this build has no CUDA backend (built without CUDA: the `cuda` feature is off)",
            ));
        }
        let gpus = crate::hardware::cuda()
            .map_err(|why| Error::Cuda(format!("--device cuda: {why}")))?
            .0;
        if device >= gpus.len() {
            return Err(Error::Cuda(format!(
                "--device cuda:{device}: this machine has {} CUDA GPU(s)",
                gpus.len()
            )));
        }
        let kernels = kernels_from_env().map_err(Error::Kernels)?;
        Ok(Backend::Cuda {
            gpu: crate::device::open(device)?,
            kernels,
        })
    }

    pub fn kernels(&self) -> &'static Kernels {
        match self {
            Backend::Cpu { kernels, .. } | Backend::Cuda { kernels, .. } => kernels,
        }
    }

    pub fn exec(&self) -> &dyn Exec {
        match self {
            Backend::Cpu { pool: Some(p), .. } => p,
            Backend::Cpu { pool: None, .. } | Backend::Cuda { .. } => &Serial,
        }
    }

    /// The GPU, when this backend is one.
    pub fn gpu(&self) -> Option<&crate::device::Gpu> {
        match self {
            Backend::Cpu { .. } => None,
            Backend::Cuda { gpu, .. } => Some(gpu),
        }
    }

    pub fn threads(&self) -> usize {
        match self {
            Backend::Cpu { pool, .. } => pool.as_ref().map_or(1, Pool::threads),
            Backend::Cuda { .. } => 1,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu { kernels, .. } => {
                format!("cpu ({}, {} threads)", kernels.tier.name(), self.threads())
            }
            Backend::Cuda { gpu, .. } => crate::device::describe(gpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Every element is visited exactly once, with the right first-unit index, for uneven sizes, fewer units
    /// than threads, and many calls in a row (the workers' spin-and-sleep path included).
    #[test]
    fn parts_cover_the_buffer_once() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads).unwrap();
            for (len, unit) in [(0, 1), (1, 1), (7, 1), (12, 3), (994, 7), (4096, 64)] {
                for round in 0..50 {
                    let mut data = vec![0.0f32; len];
                    let calls = AtomicU32::new(0);
                    pool.split(&mut data, unit, &|first, part| {
                        calls.fetch_add(1, Relaxed);
                        assert_eq!(part.len() % unit, 0);
                        for (i, v) in part.iter_mut().enumerate() {
                            *v += (first * unit + i) as f32 + 1.0;
                        }
                    });
                    for (i, v) in data.iter().enumerate() {
                        assert_eq!(
                            *v,
                            i as f32 + 1.0,
                            "threads {threads} len {len} unit {unit}"
                        );
                    }
                    assert!(calls.load(Relaxed) as usize <= threads.max(1) * PARTS_PER_THREAD);
                    if round == 25 {
                        // Let the workers fall asleep, then wake them.
                        std::thread::sleep(SPIN * 3);
                    }
                }
            }
        }
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    /// Without a GPU (or without the feature), `--device cuda` is one clear error, never a panic.
    #[test]
    fn cuda_without_a_gpu_is_one_clear_error() {
        if crate::hardware::cuda().is_ok_and(|(g, _)| !g.is_empty()) && crate::device::COMPILED {
            // Not this test's case: runtime-cuda/tests/gpu.rs runs on GPU machines.
            return;
        }
        let Err(e) = Backend::cuda(0) else {
            panic!("a backend without a GPU")
        };
        let line = e.to_string();
        assert!(line.starts_with("--device cuda"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("no CUDA") || line.contains("built without CUDA") || line.contains("GPU"),
            "{line}"
        );
    }

    /// A panic in any part reaches the caller, and the pool still works afterwards.
    #[test]
    fn a_panic_in_a_part_reaches_the_caller() {
        let pool = Pool::new(2).unwrap();
        for bad in [0usize, 5] {
            let mut data = vec![0.0f32; 10];
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.split(&mut data, 1, &|first, part| {
                    if (first..first + part.len()).contains(&bad) {
                        panic!("part {first}");
                    }
                })
            }));
            assert!(r.is_err());
        }
        let mut data = vec![1.0f32; 10];
        pool.split(&mut data, 1, &|_, p| p.iter_mut().for_each(|v| *v *= 2.0));
        assert_eq!(data, vec![2.0; 10]);
    }

    /// A split called from inside a split runs on the caller's thread instead of deadlocking.
    #[test]
    fn nested_split_runs_serially() {
        let pool = Pool::new(2).unwrap();
        let mut outer = vec![0.0f32; 4];
        pool.split(&mut outer, 1, &|_, part| {
            let mut inner = vec![0.0f32; 8];
            pool.split(&mut inner, 1, &|_, p| p.iter_mut().for_each(|v| *v = 1.0));
            part.iter_mut().for_each(|v| *v = inner.iter().sum());
        });
        assert_eq!(outer, vec![8.0; 4]);
    }
}
