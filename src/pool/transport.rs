//! How weir reaches a pool's workers: the protocol they speak and the TLS it wraps them in,
//! built once per config (reading the CA and client certificate files) and swapped whole by a
//! reload.

use std::net::SocketAddr;

use rustls_pki_types::ServerName;

use crate::config::{PoolConfig, WorkerProtocol, WorkerTlsConfig};

/// ALPN of an HTTP/2 pool's handshakes.
const ALPN_H2: &[u8] = b"h2";
/// ALPN of an HTTP/1.1 pool's handshakes: a worker serving both picks HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Numbers each transport built, so a connection made with an older one is known.
static NEXT_TRANSPORT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A pool's way to its workers.
#[derive(Debug)]
pub struct Transport {
    /// Which build of the pool's transport this is: a connection pooled under another one (a
    /// reload changed the protocol or the TLS settings) is not reused.
    pub id: u64,
    /// What the workers speak.
    pub protocol: WorkerProtocol,
    /// TLS around every connection, if any.
    pub tls: Option<WorkerTls>,
}

/// TLS to a pool's workers.
pub struct WorkerTls {
    /// Makes the client side of each handshake.
    pub connector: tokio_rustls::TlsConnector,
    /// The name sent as SNI and verified (`tls.server_name`); `None`: the worker's address.
    server_name: Option<ServerName<'static>>,
    /// `tls.insecure_skip_verify`: certificates are not verified.
    pub insecure: bool,
}

impl std::fmt::Debug for WorkerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Plain HTTP/1.1, the default.
    pub fn plain() -> Self {
        Transport {
            id: 0,
            protocol: WorkerProtocol::Http1,
            tls: None,
        }
    }

    /// From a pool's `protocol` and `tls`. Errors name the key under the pool's table
    /// (`"tls.ca"`) with a one-line reason.
    pub fn from_config(config: &PoolConfig) -> Result<Self, (String, String)> {
        let protocol = config.protocol;
        let tls = match (protocol, &config.tls) {
            (WorkerProtocol::H2c, Some(_)) => {
                return Err((
                    "tls".into(),
                    "h2c is HTTP/2 in plain text; HTTP/2 over TLS is protocol = \"h2\"".into(),
                ))
            }
            (WorkerProtocol::H2c, None) | (WorkerProtocol::Http1, None) => None,
            // HTTP/2 over TLS with no `tls` table: verified against the public roots.
            (WorkerProtocol::H2, None) => {
                Some(WorkerTls::new(&WorkerTlsConfig::default(), protocol)?)
            }
            (_, Some(tls)) => Some(WorkerTls::new(tls, protocol)?),
        };
        let id = NEXT_TRANSPORT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Transport { id, protocol, tls })
    }

    /// Whether connections are plain HTTP/1.1 (weir's own client, no handshake).
    pub fn is_plain_http1(&self) -> bool {
        self.protocol == WorkerProtocol::Http1 && self.tls.is_none()
    }

    /// The URI scheme of requests to the workers.
    pub fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }
}

impl WorkerTls {
    fn new(config: &WorkerTlsConfig, protocol: WorkerProtocol) -> Result<Self, (String, String)> {
        let alpn: &[&[u8]] = if protocol.is_h2() {
            &[ALPN_H2]
        } else {
            &[ALPN_HTTP1]
        };
        let client = crate::tls::worker_client_config(config, alpn)
            .map_err(|(key, message)| (format!("tls.{key}"), message))?;
        let server_name = match &config.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                (
                    "tls.server_name".to_string(),
                    format!("{name:?} is not a DNS name or IP address"),
                )
            })?),
            None => None,
        };
        Ok(WorkerTls {
            connector: tokio_rustls::TlsConnector::from(client),
            server_name,
            insecure: config.insecure_skip_verify,
        })
    }

    /// The name to ask `addr` for: `tls.server_name`, else its IP address.
    pub fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::IpAddress(addr.ip().into()),
        }
    }
}
