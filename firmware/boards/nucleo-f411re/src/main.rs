//! ST Nucleo-F411RE: STM32F411RE (Cortex-M4F) at 100 MHz from the ST-LINK's 8 MHz clock; the console is
//! USART2 on PA2/PA3, which the ST-LINK bridges to a USB virtual COM port (115200 8N1); defmt over RTT.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use defmt_rtt as _;
use enigma_firmware::console::{Crlf, NbSerial};
use enigma_firmware::Then;
use stm32f4xx_hal::{pac, prelude::*, rcc::Config, serial};

#[entry]
fn main() -> ! {
    let Some(dp) = pac::Peripherals::take() else {
        defmt::panic!("peripherals taken twice");
    };
    // HSE in bypass mode: the ST-LINK's MCO drives OSC_IN with 8 MHz.
    let mut rcc = dp.RCC.freeze(
        Config::hse(8.MHz())
            .bypass_hse_oscillator()
            .sysclk(100.MHz()),
    );
    defmt::info!(
        "enigma firmware on nucleo-f411re at {=u32} Hz",
        rcc.clocks.sysclk().raw()
    );
    let gpioa = dp.GPIOA.split(&mut rcc);
    let config = serial::Config::default().baudrate(115_200.bps());
    let Ok(usart) = dp
        .USART2
        .serial::<u8>((gpioa.pa2, gpioa.pa3), config, &mut rcc)
    else {
        defmt::panic!("USART2 configuration rejected");
    };
    let mut console = Crlf(NbSerial(usart));
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
