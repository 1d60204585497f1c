//! A defmt global logger writing frames to UART1 (QEMU's second `-serial`), so they never mix with the
//! console's text; `defmt-print -e <ELF> < uart1.log` decodes them. (Real boards use RTT instead.)

use crate::uart::{Uart, UART1};
use core::sync::atomic::{AtomicBool, Ordering};

#[defmt::global_logger]
struct Logger;

static TAKEN: AtomicBool = AtomicBool::new(false);
static mut RESTORE: critical_section::RestoreState = critical_section::RestoreState::invalid();
static mut ENCODER: defmt::Encoder = defmt::Encoder::new();

fn put(bytes: &[u8]) {
    let mut uart = Uart::<UART1>::steal();
    bytes.iter().for_each(|&b| uart.put(b));
}

// SAFETY: frames are written inside a critical section (acquire to release) and re-entry panics, so
// RESTORE and ENCODER have one user at a time, as defmt's contract requires.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // SAFETY: paired with the `release` in `Logger::release`.
        let restore = unsafe { critical_section::acquire() };
        if TAKEN.load(Ordering::Relaxed) {
            panic!("defmt logger taken reentrantly");
        }
        TAKEN.store(true, Ordering::Relaxed);
        // SAFETY: inside the critical section, TAKEN set: nothing else touches these statics.
        unsafe {
            RESTORE = restore;
            (*core::ptr::addr_of_mut!(ENCODER)).start_frame(put);
        }
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: called after `acquire`, inside its critical section.
        unsafe {
            (*core::ptr::addr_of_mut!(ENCODER)).end_frame(put);
            TAKEN.store(false, Ordering::Relaxed);
            critical_section::release(RESTORE);
        }
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: called between `acquire` and `release`.
        unsafe { (*core::ptr::addr_of_mut!(ENCODER)).write(bytes, put) }
    }
}
