//! Certificates weir obtained itself (ACME), as the TLS listeners serve them and the plain
//! listeners prove control of their names: the issued certificates by name, the HTTP-01
//! challenge tokens of orders under way, and the names still waiting for a first certificate
//! (`/readyz`). One set per weir, carried across reloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use rustls::sign::CertifiedKey;

/// What the ACME side shares with the serving side.
#[derive(Default)]
pub struct Certs {
    issued: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// When each name's served certificate ends.
    ends: Mutex<BTreeMap<String, SystemTime>>,
    tokens: DashMap<String, String>,
    /// TLS-ALPN-01 answers: a self-signed certificate per name under challenge.
    alpn: DashMap<String, Arc<CertifiedKey>>,
    waiting: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("names", &self.issued.load().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Certs {
    /// The certificate issued for `name` (lower case), if any.
    pub fn issued_for(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.issued.load().get(name).cloned()
    }

    /// Serve `key` for each of `names` from now on (a first certificate, or a renewal: the
    /// old one is replaced only here, once the new one is in hand).
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>, end: SystemTime) {
        {
            let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
            for name in names {
                ends.insert(name.to_ascii_lowercase(), end);
            }
        }
        self.issued.rcu(|current| {
            let mut next = HashMap::clone(current);
            for name in names {
                next.insert(name.to_ascii_lowercase(), Arc::clone(&key));
            }
            next
        });
        self.lock_waiting().remove(&names.join(","));
    }

    /// When the certificate served for `name` ends, if one is.
    pub fn end_of(&self, name: &str) -> Option<SystemTime> {
        self.ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
    }

    /// Each served name and when its certificate ends.
    pub fn ends(&self) -> Vec<(String, SystemTime)> {
        self.ends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, end)| (name.clone(), *end))
            .collect()
    }

    /// The key authorization to answer an HTTP-01 challenge `token` with.
    pub fn challenge(&self, token: &str) -> Option<String> {
        self.tokens.get(token).map(|v| v.clone())
    }

    /// Answer challenge `token` with `key_authorization` until [`Certs::forget_challenge`].
    pub fn set_challenge(&self, token: String, key_authorization: String) {
        self.tokens.insert(token, key_authorization);
    }

    /// Stop answering challenge `token`.
    pub fn forget_challenge(&self, token: &str) {
        self.tokens.remove(token);
    }

    /// The certificate answering a TLS-ALPN-01 challenge for `name`, while one is under way.
    pub fn alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.get(name).map(|k| Arc::clone(&k))
    }

    /// Answer TLS-ALPN-01 handshakes for `name` with `key` until [`Certs::forget_alpn`].
    pub fn set_alpn_challenge(&self, name: String, key: Arc<CertifiedKey>) {
        self.alpn.insert(name, key);
    }

    /// Stop answering TLS-ALPN-01 handshakes for `name`.
    pub fn forget_alpn(&self, name: &str) {
        self.alpn.remove(name);
    }

    /// `names` have no certificate yet, for `why` (`/readyz` says so until one arrives).
    pub fn waiting_for(&self, names: &[String], why: String) {
        self.lock_waiting().insert(names.join(","), why);
    }

    /// Why names are waiting for their first certificate, one line each.
    pub fn waiting(&self) -> Vec<String> {
        self.lock_waiting()
            .iter()
            .map(|(names, why)| format!("acme: no certificate yet for {names}: {why}"))
            .collect()
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// When the certificate `der` stops being valid (its `notAfter`); `None` if it cannot be read.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    use crate::client_cert::{der_element, tbs_sequence, TBS_VALIDITY};
    let validity = tbs_sequence(der, TBS_VALIDITY)?;
    // notBefore, then notAfter.
    let (_, _, rest) = der_element(validity)?;
    let (tag, value, _) = der_element(rest)?;
    parse_time(tag, value)
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn parse_time(tag: u8, value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        0x18 if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    let seconds = u64::try_from(seconds).ok()?;
    Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn a_certificates_end_is_read_from_its_der() {
        let der = CertificateDer::pem_file_iter("certs-dev/client-cert.pem")
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let end = not_after(&der).expect("notAfter");
        let years = end
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs()
            / (365 * 86_400);
        assert!((8..=10).contains(&years), "{years} years left");
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        let t = parse_time(0x17, b"491231235959Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            2_524_607_999
        );
        assert!(parse_time(0x18, b"20491231235959Z").is_some());
        assert!(parse_time(0x17, b"4912312359Z").is_none());
        assert_eq!(not_after(&[0x30, 0x00]), None);
    }

    #[test]
    fn challenges_and_waiting_names() {
        let certs = Certs::default();
        certs.set_challenge("t1".into(), "t1.thumb".into());
        assert_eq!(certs.challenge("t1").as_deref(), Some("t1.thumb"));
        certs.forget_challenge("t1");
        assert_eq!(certs.challenge("t1"), None);
        let names = vec!["a.test".to_string(), "b.test".to_string()];
        certs.waiting_for(&names, "order pending".into());
        assert_eq!(
            certs.waiting(),
            ["acme: no certificate yet for a.test,b.test: order pending"]
        );
    }
}
