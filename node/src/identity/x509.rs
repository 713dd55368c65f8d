//! What Shoal reads from an X.509 certificate (service name, serial, validity, CA flag, public
//! key), parsed with `x509-parser`, and the public [`CertificateInfo`] and [`CertSerial`].

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::{SERVICE_DNS_SUFFIX, validate_service_name};
use crate::error::Error;

/// A certificate's serial number: what a revocation list names.
///
/// Printed as uppercase hexadecimal without separators, as `openssl x509 -noout -serial` prints
/// it (leading zero bytes dropped). Parsed from hexadecimal with or without `:` separators, in
/// either case, with an optional `0x`: `3A5F…`, `3a:5f:…` and `0x3a5f…` are the same serial.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertSerial(Box<[u8]>);

impl CertSerial {
    /// The serial from its big-endian bytes, as a certificate encodes them.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let first = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len().saturating_sub(1));
        Self(bytes[first..].into())
    }

    /// The serial's big-endian bytes, without leading zero bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

impl fmt::Debug for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertSerial({self})")
    }
}

impl FromStr for CertSerial {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let hex = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        let byte = |digits: &str| {
            let hex_digits = digits.chars().all(|c| c.is_ascii_hexdigit());
            (hex_digits && (1..=2).contains(&digits.len()))
                .then(|| u8::from_str_radix(digits, 16).ok())
                .flatten()
        };
        let bytes: Option<Vec<u8>> = if hex.contains(':') {
            // `3a:5f:1`: every group is one byte.
            hex.split(':').map(byte).collect()
        } else if hex.is_ascii() {
            // `3a5f01`; an odd number of digits has an implicit leading zero.
            let padded = if hex.len() % 2 == 1 {
                format!("0{hex}")
            } else {
                hex.to_owned()
            };
            (0..padded.len())
                .step_by(2)
                .map(|i| byte(&padded[i..i + 2]))
                .collect()
        } else {
            None
        };
        match bytes {
            // RFC 5280: at most 20 octets (21 with a leading zero).
            Some(bytes) if !bytes.is_empty() && bytes.len() <= 21 => Ok(Self::from_bytes(&bytes)),
            _ => Err(Error::Identity(format!(
                "`{s}` is not a certificate serial (hexadecimal digits, optionally separated \
                 by `:`)"
            ))),
        }
    }
}

/// What a certificate says about the node that holds it: see [`crate::Identity::certificate`]
/// and [`crate::Node::certificate`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// The service it was issued for (its `<service>.svc.shoal.mesh` name), if it names one.
    pub service: Option<String>,
    /// Its serial number, the key of revocation lists.
    pub serial: CertSerial,
    /// The first moment it is valid.
    pub not_before: SystemTime,
    /// The last moment it is valid.
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// Reads a DER-encoded certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        Ok(Parsed::new(der)?.info)
    }

    /// Reads the first certificate of a PEM text (a certificate file such as `billing.pem`).
    pub fn from_pem(pem_text: &str) -> Result<Self, Error> {
        let certs = super::encoding::parse_cert_pem(pem_text, "the certificate")?;
        Self::from_der(&certs[0])
    }

    /// How long it stays valid after `now`; `None` if it has expired by then.
    pub fn remaining_at(&self, now: SystemTime) -> Option<Duration> {
        self.not_after.duration_since(now).ok()
    }

    /// Its whole validity period (`not_after - not_before`).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO)
    }
}

/// Everything Shoal reads from one certificate.
pub(crate) struct Parsed {
    pub(crate) info: CertificateInfo,
    /// Whether it is a CA certificate (BasicConstraints cA=TRUE).
    pub(crate) is_ca: bool,
    /// The DER encoding of its SubjectPublicKeyInfo.
    pub(crate) spki: Vec<u8>,
    /// The DER encodings of its subject and issuer names.
    pub(crate) subject: Vec<u8>,
    pub(crate) issuer: Vec<u8>,
    /// Its subject's common name, if any.
    pub(crate) common_name: Option<String>,
    /// Its DNS subject alternative names.
    #[cfg(test)]
    pub(crate) dns_names: Vec<String>,
}

impl Parsed {
    /// Parses a DER certificate; any decoding error is an [`Error::Identity`].
    pub(crate) fn new(der: &[u8]) -> Result<Self, Error> {
        let invalid = |e: String| Error::Identity(format!("not a valid X.509 certificate: {e}"));
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| invalid(e.to_string()))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes after its end", rest.len())));
        }
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(invalid(format!("bad subject alternative names: {e}"))),
        };
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let validity = cert.validity();
        let info = CertificateInfo {
            service: service_of(&dns_names),
            serial: CertSerial::from_bytes(cert.raw_serial()),
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
        };
        Ok(Self {
            info,
            is_ca: cert.is_ca(),
            spki: cert.public_key().raw.to_vec(),
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            common_name,
            #[cfg(test)]
            dns_names,
        })
    }
}

/// The service named by the first valid `<service>.svc.shoal.mesh` DNS name.
fn service_of(dns_names: &[String]) -> Option<String> {
    dns_names.iter().find_map(|name| {
        let service = name.strip_suffix(SERVICE_DNS_SUFFIX)?;
        validate_service_name(service).ok()?;
        Some(service.to_owned())
    })
}

/// Seconds since the Unix epoch (negative before it) as a [`SystemTime`].
pub(crate) fn to_system_time(unix: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn serials_print_like_openssl_and_parse_in_every_common_spelling() {
        let serial = CertSerial::from_bytes(&[0x00, 0x3a, 0x5f, 0x01]);
        assert_eq!(serial.to_string(), "3A5F01");
        assert_eq!(serial.as_bytes(), &[0x3a, 0x5f, 0x01]);
        for text in [
            "3A5F01",
            "3a5f01",
            "3a:5f:01",
            "0x3a5f01",
            " 003A5F01 ",
            "3A:5F:1",
        ] {
            assert_eq!(text.parse::<CertSerial>().unwrap(), serial, "{text}");
        }
        assert_eq!(CertSerial::from_bytes(&[0, 0]).to_string(), "00");
        for bad in [
            "",
            "0x",
            "xyz",
            "3a-5f",
            "+f",
            "3a::5f",
            "é1",
            &"ab".repeat(30),
        ] {
            let err = bad.parse::<CertSerial>().unwrap_err();
            assert!(err.to_string().contains("serial"), "{err}");
        }
    }
}
