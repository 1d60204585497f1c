//! Raspberry Pi Pico: RP2040 (Cortex-M0+, no FPU) at 125 MHz from its 12 MHz crystal; the console is UART0 on
//! GP0 (TX) / GP1 (RX) at 115200 8N1; defmt over RTT. The model is read in place from the QSPI flash (XIP).
//! Without an FPU, q8_0 models (integer dot products) are the ones to run here.
#![no_std]
#![no_main]

use defmt_rtt as _;
use enigma_firmware::console::{Crlf, NbSerial};
use enigma_firmware::Then;
use rp2040_hal::clocks::{init_clocks_and_plls, Clock};
use rp2040_hal::fugit::RateExtU32;
use rp2040_hal::gpio::{FunctionUart, Pins};
use rp2040_hal::uart::{DataBits, StopBits, UartConfig, UartPeripheral};
use rp2040_hal::{entry, pac, Sio, Watchdog};

/// The second-stage bootloader the boot ROM copies from the first 256 bytes of flash: it sets up XIP for the
/// Pico's W25Q080.
#[link_section = ".boot2"]
#[used]
pub static BOOT2: [u8; 256] = rp2040_boot2::BOOT_LOADER_W25Q080;

const XTAL_HZ: u32 = 12_000_000;

#[entry]
fn main() -> ! {
    let Some(mut pac) = pac::Peripherals::take() else {
        defmt::panic!("peripherals taken twice");
    };
    let mut watchdog = Watchdog::new(pac.WATCHDOG);
    let Ok(clocks) = init_clocks_and_plls(
        XTAL_HZ,
        pac.XOSC,
        pac.CLOCKS,
        pac.PLL_SYS,
        pac.PLL_USB,
        &mut pac.RESETS,
        &mut watchdog,
    ) else {
        defmt::panic!("clock setup failed");
    };
    defmt::info!(
        "enigma firmware on rp-pico at {=u32} Hz",
        clocks.system_clock.freq().to_Hz()
    );
    let sio = Sio::new(pac.SIO);
    let pins = Pins::new(
        pac.IO_BANK0,
        pac.PADS_BANK0,
        sio.gpio_bank0,
        &mut pac.RESETS,
    );
    let uart_pins = (
        pins.gpio0.into_function::<FunctionUart>(),
        pins.gpio1.into_function::<FunctionUart>(),
    );
    let config = UartConfig::new(115_200.Hz(), DataBits::Eight, None, StopBits::One);
    let Ok(uart) = UartPeripheral::new(pac.UART0, uart_pins, &mut pac.RESETS)
        .enable(config, clocks.peripheral_clock.freq())
    else {
        defmt::panic!("UART0 configuration rejected");
    };
    // Through embedded-hal-nb (this HAL implements embedded-io 0.7; the firmware speaks 0.6).
    let mut console = Crlf(NbSerial(uart));
    if let Err(e) = enigma_firmware::run(&mut console, Then::Listen) {
        defmt::panic!("firmware failed: {}", e);
    }
    loop {
        cortex_m::asm::wfi();
    }
}

/// Logs where the panic happened and stops at an undefined instruction (which probe-rs reports). The
/// message is not formatted: that would pull core::fmt into flash, which this board needs for the model.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => defmt::error!("panic at {=str}:{=u32}", l.file(), l.line()),
        None => defmt::error!("panic"),
    }
    cortex_m::asm::udf()
}
