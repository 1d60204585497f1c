//! Arm MPS2 AN386 (Cortex-M4F at 25 MHz) under QEMU: UART0 is the console, UART1 carries the defmt log and
//! semihosting the exit code, so `enigma flash --board mps2-an386` streams the text, decodes the log, and fails
//! when the firmware does (error, panic or hard fault).
#![no_std]
#![no_main]

#[cfg(feature = "defmt")]
mod logger;
mod uart;

use cortex_m as _; // its critical-section implementation (for the defmt logger)
use cortex_m_rt::{entry, exception, ExceptionFrame};
use enigma_firmware::Then;

/// SYSCLK of the AN385/AN386 images, which clocks the APB UARTs.
const SYSCLK_HZ: u32 = 25_000_000;

#[entry]
fn main() -> ! {
    uart::Uart::<{ uart::UART1 }>::new(SYSCLK_HZ, 115_200);
    enigma_firmware::fmt::set_sink(text_log);
    enigma_firmware::info!("enigma firmware on mps2-an386 (Cortex-M4F)");
    let mut console = uart::Uart0::new(SYSCLK_HZ, 115_200);
    // With a built-in prompt the run is a batch job (CI, benches): generate, then exit. Without one, chat.
    let then = if enigma_firmware::PROMPT.is_empty() {
        Then::Listen
    } else {
        Then::Return
    };
    match enigma_firmware::run(&mut console, then) {
        Ok(()) => semihosting::process::exit(0),
        Err(e) => {
            enigma_firmware::error!("firmware failed: {}", e);
            semihosting::process::exit(1)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "defmt")]
    defmt::error!("panic: {}", defmt::Display2Format(info));
    #[cfg(not(feature = "defmt"))]
    enigma_firmware::error!("panic: {}", info);
    // The message goes to the console too, so it shows without the defmt decoder.
    let _ = core::fmt::Write::write_fmt(
        &mut uart::Uart0::steal(),
        format_args!("\nfirmware {info}\n"),
    );
    semihosting::process::exit(101)
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    enigma_firmware::error!("hard fault at pc {:#x}", frame.pc());
    semihosting::process::exit(102)
}

/// Without defmt, log lines go to UART1 as text (`[LEVEL] message`), where the defmt frames would go.
fn text_log(level: enigma_firmware::fmt::Level, args: core::fmt::Arguments<'_>) {
    let mut uart = uart::Uart::<{ uart::UART1 }>::steal();
    let _ = core::fmt::Write::write_fmt(&mut uart, format_args!("[{}] {}\n", level.name(), args));
}
