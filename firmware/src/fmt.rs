//! Logging that does not tie a board to a debug probe (embassy's `fmt.rs` pattern). The firmware logs through
//! `info!`, `warn!` and `error!` (exported at the crate root); with the `defmt` feature they are `defmt`'s
//! (compact frames a probe or a second UART carries, decoded on the host), without it each line is formatted
//! with `core::fmt` and handed to the sink the board set with [`set_sink`] (its UART, say), or dropped when
//! it set none. Format strings use plain `{}` / `{:#x}` so both sides accept them; the values must implement
//! both `defmt::Format` and `core::fmt::Display`.

/// How severe a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Where log lines go without defmt.
pub type Sink = fn(Level, core::fmt::Arguments<'_>);

#[cfg(not(feature = "defmt"))]
static SINK: core::sync::atomic::AtomicPtr<()> =
    core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// Sends the log to `sink` from now on (boards built without `defmt`; with it, this does nothing: defmt's
/// global logger carries the log). Plain loads and stores: Armv6-M has no compare-and-swap.
pub fn set_sink(sink: Sink) {
    #[cfg(not(feature = "defmt"))]
    SINK.store(sink as *mut (), core::sync::atomic::Ordering::Release);
    #[cfg(feature = "defmt")]
    let _ = sink;
}

/// One log line to the sink, if there is one (what the macros call without defmt).
#[cfg(not(feature = "defmt"))]
pub fn log(level: Level, args: core::fmt::Arguments<'_>) {
    let p = SINK.load(core::sync::atomic::Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: SINK only ever holds null or a `Sink` stored by `set_sink`; fn pointers and data pointers
        // have the same size and representation on the targets this firmware builds for.
        let sink: Sink = unsafe { core::mem::transmute::<*mut (), Sink>(p) };
        sink(level, args);
    }
}

#[cfg(feature = "defmt")]
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::__defmt::info!($($t)*) };
}
#[cfg(feature = "defmt")]
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::__defmt::warn!($($t)*) };
}
#[cfg(feature = "defmt")]
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::__defmt::error!($($t)*) };
}

#[cfg(not(feature = "defmt"))]
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::fmt::log($crate::fmt::Level::Info, format_args!($($t)*)) };
}
#[cfg(not(feature = "defmt"))]
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::fmt::log($crate::fmt::Level::Warn, format_args!($($t)*)) };
}
#[cfg(not(feature = "defmt"))]
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::fmt::log($crate::fmt::Level::Error, format_args!($($t)*)) };
}
