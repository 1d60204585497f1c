//! Engines that find each other on a LAN: mDNS/DNS-SD (RFC 6762/6763) through `mdns-sd`.
//!
//! `enigma serve --advertise` publishes a `_enigma._tcp.local.` service whose TXT records carry the model,
//! the engine's version and its API paths; `enigma devices` and `--remote auto` browse for them. Multicast
//! stays on the link, so only machines on the same LAN segment see each other, and loopback carries none
//! (the tests use a pair of network namespaces joined by a veth link).
//!
//! A server wires it in one line, kept alive for as long as it serves:
//!
//! ```no_run
//! # fn serve(port: u16, model: &str) -> Result<(), enigma_discover::Error> {
//! let _advertised = enigma_discover::advertise(&enigma_discover::default_name(), port, model)?;
//! # Ok(()) }
//! ```

use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The DNS-SD service type every engine publishes.
pub const SERVICE_TYPE: &str = "_enigma._tcp.local.";
/// The API prefix (TXT `api`) and the routes under it (TXT `paths`) a device serves.
pub const API_PREFIX: &str = "/v1";
pub const API_PATHS: &str = "/v1/models,/v1/completions,/v1/chat/completions,/v1/modules";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("cannot advertise {0:?}: a name is 1 to 63 bytes")]
    BadName(String),
    #[error("cannot advertise port 0")]
    BadPort,
}

/// An engine found on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The instance name it advertised (by default its host name).
    pub name: String,
    /// The model it serves (TXT `model`; empty when it said none).
    pub model: String,
    /// The engine's version (TXT `version`).
    pub version: String,
    /// Its addresses, IPv4 first, each once.
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    /// The API prefix (TXT `api`, default `/v1`).
    pub api: String,
}

impl Device {
    /// The base URL of its server (what `--remote` takes), on its first address; `None` if it gave none.
    pub fn url(&self) -> Option<String> {
        self.addresses.first().map(|a| match a {
            IpAddr::V4(v4) => format!("http://{v4}:{}", self.port),
            IpAddr::V6(v6) => format!("http://[{v6}]:{}", self.port),
        })
    }
}

/// A published service; dropping it withdraws the service (a goodbye packet, so browsers forget it now
/// rather than when its records expire) and stops the responder thread.
pub struct Advertisement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Advertisement {
    /// The service's full DNS-SD name, `NAME._enigma._tcp.local.`.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        // Waits briefly for the goodbye to go out; a daemon already gone has nothing left to withdraw.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// This machine's host name, the default instance name: what people call the machine.
pub fn default_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "enigma".to_string())
}

/// A DNS label from `name` for the A/AAAA records' host: letters, digits and `-` only.
fn host_label(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "enigma".to_string()
    } else {
        label.chars().take(63).collect()
    }
}

/// Publishes an engine serving `model` on TCP `port` under the instance name `name`, on every
/// non-loopback interface (addresses follow the interfaces as they come and go). Keep the returned
/// value for as long as the server runs.
pub fn advertise(name: &str, port: u16, model: &str) -> Result<Advertisement, Error> {
    if name.is_empty() || name.len() > 63 {
        return Err(Error::BadName(name.to_string()));
    }
    if port == 0 {
        return Err(Error::BadPort);
    }
    let host = format!("{}.local.", host_label(name));
    // A TXT string is at most 255 bytes with its key; a longer model name is cut on a character boundary.
    let model: String = model
        .char_indices()
        .take_while(|(i, c)| i + c.len_utf8() <= 240)
        .map(|(_, c)| c)
        .collect();
    let properties = [
        ("model", model.as_str()),
        ("version", env!("CARGO_PKG_VERSION")),
        ("api", API_PREFIX),
        ("paths", API_PATHS),
    ];
    let info =
        ServiceInfo::new(SERVICE_TYPE, name, &host, "", port, &properties[..])?.enable_addr_auto();
    let fullname = info.get_fullname().to_string();
    let daemon = ServiceDaemon::new()?;
    daemon.register(info)?;
    Ok(Advertisement { daemon, fullname })
}

/// Listens for engines for `timeout` and returns those that answered, sorted by name. An engine whose
/// records arrive in parts is reported once, with every address it gave.
pub fn browse(timeout: Duration) -> Result<Vec<Device>, Error> {
    let daemon = ServiceDaemon::new()?;
    let events = daemon.browse(SERVICE_TYPE)?;
    let deadline = Instant::now() + timeout;
    let mut found: BTreeMap<String, Device> = BTreeMap::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let event = match events.recv_timeout(left) {
            Ok(e) => e,
            Err(_) => break,
        };
        match event {
            ServiceEvent::ServiceResolved(s) if s.is_valid() => {
                let mut addresses: Vec<IpAddr> =
                    s.get_addresses().iter().map(|a| a.to_ip_addr()).collect();
                let txt = |k: &str| s.get_property_val_str(k).unwrap_or("").to_string();
                let device = found.entry(s.get_fullname().to_string()).or_insert(Device {
                    name: instance_name(s.get_fullname()),
                    model: txt("model"),
                    version: txt("version"),
                    addresses: Vec::new(),
                    port: s.port,
                    api: Some(txt("api"))
                        .filter(|a| !a.is_empty())
                        .unwrap_or_else(|| API_PREFIX.to_string()),
                });
                addresses.retain(|a| !device.addresses.contains(a));
                device.addresses.extend(addresses);
                // IPv4 first: a link-local IPv6 address needs its interface named to be reached.
                device.addresses.sort_by_key(|a| (a.is_ipv6(), *a));
                device.port = s.port;
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                found.remove(&fullname);
            }
            _ => {}
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(Duration::from_secs(1));
    }
    let mut devices: Vec<Device> = found.into_values().collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(devices)
}

/// `My Box._enigma._tcp.local.` -> `My Box` (DNS-SD escapes a `.` or `\` inside the name with `\`).
fn instance_name(fullname: &str) -> String {
    let inner = fullname
        .strip_suffix(SERVICE_TYPE)
        .map_or(fullname, |s| s.trim_end_matches('.'));
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_back_from_full_names() {
        assert_eq!(instance_name("box._enigma._tcp.local."), "box");
        assert_eq!(instance_name("My\\.Box._enigma._tcp.local."), "My.Box");
        assert_eq!(instance_name("odd"), "odd");
    }

    #[test]
    fn host_labels_are_dns_safe() {
        assert_eq!(host_label("pi 5 (kitchen)"), "pi-5--kitchen");
        assert_eq!(host_label("..."), "enigma");
        assert_eq!(host_label(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn urls_bracket_ipv6() {
        let mut d = Device {
            name: "n".into(),
            model: "m".into(),
            version: "0".into(),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            port: 8080,
            api: "/v1".into(),
        };
        assert_eq!(d.url().as_deref(), Some("http://10.0.0.2:8080"));
        d.addresses = vec!["fe80::1".parse().unwrap()];
        assert_eq!(d.url().as_deref(), Some("http://[fe80::1]:8080"));
        d.addresses.clear();
        assert_eq!(d.url(), None);
    }

    #[test]
    fn bad_names_and_ports_are_refused() {
        assert!(matches!(advertise("", 1, "m"), Err(Error::BadName(_))));
        assert!(matches!(
            advertise(&"x".repeat(64), 1, "m"),
            Err(Error::BadName(_))
        ));
        assert!(matches!(advertise("x", 0, "m"), Err(Error::BadPort)));
    }
}
