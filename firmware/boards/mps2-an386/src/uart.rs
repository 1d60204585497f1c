//! The CMSDK APB UARTs of the MPS2 boards (QEMU connects UART0, UART1, ... to its first, second, ... `-serial`):
//! UART0 is the console (embedded-io), UART1 carries the defmt frames.

use core::ptr::{read_volatile, write_volatile};

pub const UART0: usize = 0x4000_4000;
pub const UART1: usize = 0x4000_5000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const CTRL_TX_EN: u32 = 1 << 0;
const CTRL_RX_EN: u32 = 1 << 1;

/// One UART at `BASE` (UART0 or UART1).
pub struct Uart<const BASE: usize>(());

pub type Uart0 = Uart<UART0>;

impl<const BASE: usize> Uart<BASE> {
    fn read(reg: usize) -> u32 {
        // SAFETY: BASE + reg is a register of one of the board's UARTs, always mapped; reads have no side
        // effect except DATA, which pops the received byte the caller asked for.
        unsafe { read_volatile((BASE + reg) as *const u32) }
    }

    fn write(reg: usize, v: u32) {
        // SAFETY: BASE + reg is a register of one of the board's UARTs; each UART has one user (console,
        // logger) in this firmware.
        unsafe { write_volatile((BASE + reg) as *mut u32, v) }
    }

    /// Sets the baud rate and enables transmit and receive.
    pub fn new(clock_hz: u32, baud: u32) -> Self {
        Self::write(BAUDDIV, (clock_hz / baud).max(16));
        Self::write(CTRL, CTRL_TX_EN | CTRL_RX_EN);
        Uart(())
    }

    /// The UART as it is, for writers that cannot own it (the logger, the panic handler).
    pub const fn steal() -> Self {
        Uart(())
    }

    pub fn put(&mut self, b: u8) {
        while Self::read(STATE) & STATE_TX_FULL != 0 {}
        Self::write(DATA, b as u32);
    }
}

impl<const BASE: usize> core::fmt::Write for Uart<BASE> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        s.bytes().for_each(|b| self.put(b));
        Ok(())
    }
}

impl<const BASE: usize> embedded_io::ErrorType for Uart<BASE> {
    type Error = core::convert::Infallible;
}

impl<const BASE: usize> embedded_io::Write for Uart<BASE> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        buf.iter().for_each(|&b| self.put(b));
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        while Self::read(STATE) & STATE_TX_FULL != 0 {}
        Ok(())
    }
}

impl<const BASE: usize> embedded_io::Read for Uart<BASE> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        while Self::read(STATE) & STATE_RX_FULL == 0 {}
        buf[0] = Self::read(DATA) as u8;
        Ok(1)
    }
}

impl<const BASE: usize> embedded_io::ReadReady for Uart<BASE> {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(Self::read(STATE) & STATE_RX_FULL != 0)
    }
}
