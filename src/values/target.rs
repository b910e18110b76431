//! A static worker as the config writes it: "IP:port", or "name:port" resolved through DNS.

use std::fmt;
use std::net::SocketAddr;

use super::{parse_socket_addr, HostPort};

/// One entry of a static pool's `addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum WorkerTarget {
    /// An address as it is.
    Addr(SocketAddr),
    /// A host name and port: every address the name resolves to is a worker.
    Name {
        /// The name, as written (lowercased).
        host: String,
        /// The port of every address.
        port: u16,
    },
}

impl TryFrom<String> for WorkerTarget {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if let Ok(addr) = parse_socket_addr(&text) {
            return Ok(WorkerTarget::Addr(addr));
        }
        let bad = || {
            format!("{text:?} is not an IP:port or host:port address (e.g. \"127.0.0.1:8080\", \"[::1]:8080\" or \"app.internal:8080\")")
        };
        let parsed = HostPort::parse(&text).ok_or_else(bad)?;
        let port = parsed.port.ok_or_else(bad)?;
        if parsed.host.starts_with('[') || parsed.host.is_empty() {
            return Err(bad());
        }
        Ok(WorkerTarget::Name {
            host: parsed.host.trim_end_matches('.').to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for WorkerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerTarget::Addr(addr) => addr.fmt(f),
            WorkerTarget::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkerTarget, String> {
        WorkerTarget::try_from(text.to_string())
    }

    #[test]
    fn addresses_and_names() {
        assert_eq!(
            parse("127.0.0.1:8080").unwrap(),
            WorkerTarget::Addr("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse("[::1]:8080").unwrap(),
            WorkerTarget::Addr("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse("App.Internal.:8080").unwrap(),
            WorkerTarget::Name {
                host: "app.internal".into(),
                port: 8080
            }
        );
        assert_eq!(
            parse("app.internal:8080").unwrap().to_string(),
            "app.internal:8080"
        );
        for bad in [
            "app.internal",
            "app.internal:0",
            "app internal:80",
            ":80",
            "a/b:80",
            "[::1]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
