//! TLS termination settings: certificates from PEM, chosen by SNI; ALPN h2 + http/1.1; TLS 1.2
//! and 1.3 only (all rustls speaks); stateless session tickets plus a session cache.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::Certs;
use crate::config::{CertPair, ClientAuth, TlsConfig, WorkerTlsConfig};

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737): such a handshake is answered
/// with the challenge's certificate and closed.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// TLS 1.2 sessions remembered per listener for resumption by id (1.3 uses tickets).
const SESSION_CACHE_SIZE: usize = 4096;

/// The crypto provider weir uses everywhere: aws-lc-rs, named explicitly so no second provider
/// sneaks in through a dependency's default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Build a listener's rustls config. Errors name the sub-key at fault (`"cert"`, `"certs[1].key"`).
pub fn server_config(
    tls: &TlsConfig,
    certs: &Arc<Certs>,
) -> Result<Arc<rustls::ServerConfig>, (String, String)> {
    let provider = provider();
    let default = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(certified_key(cert, key, &provider, "")?),
        _ => None,
    };
    let mut resolver = SniResolver {
        default,
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        acme: tls.acme.iter().map(|n| n.to_ascii_lowercase()).collect(),
        certs: Arc::clone(certs),
    };
    for (i, pair) in tls.certs.iter().enumerate() {
        let prefix = format!("certs[{i}].");
        let key = certified_key(&pair.cert, &pair.key, &provider, &prefix)?;
        let names = dns_names(pair, &key).map_err(|m| (format!("{prefix}cert"), m))?;
        for name in names {
            match name.strip_prefix("*.") {
                Some(suffix) => resolver
                    .wildcard
                    .insert(suffix.to_string(), Arc::clone(&key)),
                None => resolver.exact.insert(name, Arc::clone(&key)),
            };
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ("cert".to_string(), e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(
            ca,
            tls.client_auth.unwrap_or(ClientAuth::Required),
            provider,
        )?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // `acme-tls/1` last: only a CA checking a TLS-ALPN-01 challenge offers it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
        (
            "cert".to_string(),
            format!("cannot set up session tickets: {e}"),
        )
    })?;
    Ok(Arc::new(config))
}

/// A pool's client config for TLS to its workers (`[pools.NAME] tls`), offering `alpn` (h2
/// for `protocol = "h2"`). Verification against `ca` (default: the public web roots) unless
/// `insecure_skip_verify`; a client certificate when `cert` and `key` are given. Errors name
/// the sub-key at fault.
pub fn worker_client_config(
    tls: &WorkerTlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, (String, String)> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ("ca".to_string(), e.to_string()))?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(Arc::clone(&provider))))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                let fail = |m: String| ("ca".to_string(), format!("{}: {m}", ca.display()));
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail(e.to_string()))? {
                    roots
                        .add(cert.map_err(|e| fail(e.to_string()))?)
                        .map_err(|e| fail(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(fail("no PEM certificate found".into()));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ("cert".to_string(), format!("{}: {e}", cert.display())))?;
            let private = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("key".to_string(), format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| ("key".to_string(), format!("{}: {e}", key.display())))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err((
                "cert".to_string(),
                "cert and key go together (mutual TLS)".to_string(),
            ))
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `insecure_skip_verify`: any certificate passes, though the handshake's signatures are
/// still checked (so the session is at least with the holder of the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The verifier of client certificates against the roots in `ca` (mutual TLS).
fn client_verifier(
    ca: &Path,
    auth: ClientAuth,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, (String, String)> {
    let fail = |m: String| ("client_ca".to_string(), m);
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).map_err(|e| fail(format!("{}: {e}", ca.display())))?
    {
        let cert = cert.map_err(|e| fail(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| fail(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(fail(format!("{}: no PEM certificate found", ca.display())));
    }
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| fail(e.to_string()))
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
    prefix: &str,
) -> Result<Arc<CertifiedKey>, (String, String)> {
    let cert_err = |m: String| (format!("{prefix}cert"), m);
    let key_err = |m: String| (format!("{prefix}key"), m);
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_err(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(cert_err(format!(
            "{}: no PEM certificate found",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| key_err(format!("{}: {e}", key.display())))?;
    CertifiedKey::from_der(chain, private, provider)
        .map(Arc::new)
        .map_err(|e| {
            key_err(format!(
                "{} does not fit {}: {e}",
                key.display(),
                cert.display()
            ))
        })
}

/// The DNS names a certificate is valid for, from its subject alternative names.
fn dns_names(pair: &CertPair, key: &CertifiedKey) -> Result<Vec<String>, String> {
    let leaf = key
        .cert
        .first()
        .ok_or_else(|| format!("{}: empty chain", pair.cert.display()))?;
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("{}: cannot parse certificate: {e}", pair.cert.display()))?;
    let names: Vec<String> = parsed
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    if names.is_empty() {
        return Err(format!(
            "{} has no DNS names in its subject alternative names, so SNI can never choose it",
            pair.cert.display()
        ));
    }
    Ok(names)
}

/// Chooses a certificate by SNI: exact name, then a name weir obtains from its ACME CA (once
/// issued), then one-label wildcard, then the listener's default (also used when the client
/// sends no SNI, e.g. when connecting by IP). With no default, a handshake nothing matches
/// fails ("no certificate"): an ACME name before its first certificate.
#[derive(Debug)]
struct SniResolver {
    default: Option<Arc<CertifiedKey>>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The listener's `acme` names, lower case.
    acme: Vec<String>,
    certs: Arc<Certs>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let challenged = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        let Some(name) = hello.server_name() else {
            return if challenged {
                None
            } else {
                self.default.clone()
            };
        };
        let name = name.to_ascii_lowercase();
        if challenged {
            // A CA checking a TLS-ALPN-01 challenge: only its answer, never a real certificate.
            return self.certs.alpn_challenge(&name);
        }
        if let Some(key) = self.exact.get(&name) {
            return Some(Arc::clone(key));
        }
        if self.acme.contains(&name) {
            if let Some(key) = self.certs.issued_for(&name) {
                return Some(key);
            }
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(Arc::clone(key));
            }
        }
        self.default.clone()
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for `name`: its
/// acmeIdentifier extension holds the SHA-256 `digest` of the key authorization.
pub fn alpn_challenge_key(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    if digest.len() != 32 {
        return Err(format!(
            "a key authorization digest of {} bytes",
            digest.len()
        ));
    }
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    // Not `CertifiedKey::from_der`: its check parses the certificate, and webpki refuses the
    // critical acmeIdentifier extension this certificate exists to carry.
    let private = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    let signer = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// A served certificate from the PEM chain and key an ACME order gave.
pub fn certified_key_from_pem(chain: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("key: {e}"))?;
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))
}
