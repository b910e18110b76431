//! Socket addresses as the config writes them: "IP:port", IPv6 in brackets. Host names are
//! refused, so weir never resolves DNS at the wrong moment.

use std::fmt;
use std::net::SocketAddr;

/// Parse "IP:port" (IPv6 as `"[::1]:8080"`).
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not an IP:port address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")")
    })
}

/// An "IP:port" of the config (a listener, the admin API, a static worker); read as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Address(SocketAddr);

impl Address {
    /// The address.
    pub fn get(self) -> SocketAddr {
        self.0
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address(addr)
    }
}

impl TryFrom<String> for Address {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_socket_addr(&text).map(Address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_and_port_only() {
        assert_eq!(
            Address::try_from("[::1]:8080".to_string())
                .unwrap()
                .to_string(),
            "[::1]:8080"
        );
        assert!(Address::try_from("127.0.0.1:8080".to_string()).is_ok());
        let e = Address::try_from("localhost:8080".to_string()).unwrap_err();
        assert!(e.contains("is not an IP:port address"), "{e}");
        assert!(Address::try_from("127.0.0.1".to_string()).is_err());
    }
}
