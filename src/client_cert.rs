//! A verified client certificate as the worker sees it: `x-forwarded-client-cert`, as Envoy
//! writes it (`Hash=<SHA-256 of the DER, hex>;Subject="<RFC 4514 name>"`). The subject is read
//! from the certificate's DER here: a small walk over the few structures it sits in.

use http::HeaderValue;

/// The header's name. A client's own is always removed; weir sets it for a verified one.
pub static X_FORWARDED_CLIENT_CERT: http::HeaderName =
    http::HeaderName::from_static("x-forwarded-client-cert");

/// The header value for the leaf certificate `der` a handshake verified; `None` only if its
/// value could not be a header (never for a certificate rustls accepted).
pub fn header_for(der: &[u8]) -> Option<HeaderValue> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let hash = hex(digest.as_ref());
    let subject = subject_of(der).unwrap_or_default();
    let quoted = subject.replace('\\', "\\\\").replace('"', "\\\"");
    HeaderValue::from_str(&format!("Hash={hash};Subject=\"{quoted}\"")).ok()
}

/// One DER element: its tag, its contents, and what follows it.
pub(crate) fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The TBSCertificate fields after the version: serialNumber, signature, issuer, validity,
/// subject (RFC 5280 §4.1).
pub(crate) const TBS_VALIDITY: usize = 3;
const TBS_SUBJECT: usize = 4;

/// The contents of the certificate's TBSCertificate field number `index` (see
/// [`TBS_VALIDITY`]), when it is a SEQUENCE.
pub(crate) fn tbs_sequence(der: &[u8], index: usize) -> Option<&[u8]> {
    let (SEQUENCE, certificate, _) = der_element(der)? else {
        return None;
    };
    let (SEQUENCE, mut rest, _) = der_element(certificate)? else {
        return None;
    };
    // [0] version, when present.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    for _ in 0..index {
        rest = der_element(rest)?.2;
    }
    match der_element(rest)? {
        (SEQUENCE, field, _) => Some(field),
        _ => None,
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificate's subject, RFC 4514 style: the last RDN first, `CN=a,O=b`.
pub fn subject_of(der: &[u8]) -> Option<String> {
    let mut rdns = tbs_sequence(der, TBS_SUBJECT)?;
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (SET, mut attributes, next) = der_element(rdns)? else {
            return None;
        };
        rdns = next;
        let mut rdn = Vec::new();
        while !attributes.is_empty() {
            let (SEQUENCE, pair, next) = der_element(attributes)? else {
                return None;
            };
            attributes = next;
            let (OID, oid, value) = der_element(pair)? else {
                return None;
            };
            let (value_tag, value, _) = der_element(value)?;
            rdn.push(format!(
                "{}={}",
                attribute_name(oid),
                attribute_value(value_tag, value)
            ));
        }
        parts.push(rdn.join("+"));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// The short name of an attribute type, or its dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    let known = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x05] => "SERIALNUMBER",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return dotted(oid),
    };
    known.to_string()
}

fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value = 0u64;
    for b in oid {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (value / 40).min(2);
                arcs.push(first);
                arcs.push(value - first * 40);
            } else {
                arcs.push(value);
            }
            value = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A string attribute, escaped per RFC 4514; anything else as `#` and its hex.
fn attribute_value(tag: u8, value: &[u8]) -> String {
    // UTF8String, PrintableString, T61String, IA5String, VisibleString.
    let text = match tag {
        0x0c | 0x13 | 0x14 | 0x16 | 0x1a => std::str::from_utf8(value).ok(),
        _ => None,
    };
    let Some(text) = text else {
        return format!("#{}", hex(value));
    };
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c.is_control() {
            out.push_str(&format!("\\{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn der(path: &str) -> Vec<u8> {
        CertificateDer::pem_file_iter(path)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn subjects_read_from_real_certificates() {
        assert_eq!(
            subject_of(&der("certs-dev/cert.pem")).as_deref(),
            Some("CN=weir development certificate (DO NOT TRUST)")
        );
        assert_eq!(
            subject_of(&der("certs-dev/client-cert.pem")).as_deref(),
            Some("CN=client one,OU=ops\\, staff,O=weir dev")
        );
    }

    #[test]
    fn the_header_carries_the_hash_and_the_quoted_subject() {
        let der = der("certs-dev/client-cert.pem");
        let value = header_for(&der).unwrap();
        let text = value.to_str().unwrap();
        let hash = text
            .strip_prefix("Hash=")
            .and_then(|t| t.split(';').next())
            .unwrap();
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(
            text.ends_with(";Subject=\"CN=client one,OU=ops\\\\, staff,O=weir dev\""),
            "{text}"
        );
    }

    #[test]
    fn bad_der_gives_no_subject_and_values_are_escaped() {
        assert_eq!(subject_of(&[]), None);
        assert_eq!(subject_of(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_of(&[0x30, 0x03, 0x02, 0x01, 0x00]), None);
        assert_eq!(attribute_value(0x0c, b" a,b=c "), "\\ a\\,b\\=c\\ ");
        assert_eq!(attribute_value(0x04, &[0xde, 0xad]), "#dead");
        assert_eq!(dotted(&[0x2a, 0x86, 0x48]), "1.2.840");
    }
}
