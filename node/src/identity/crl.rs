//! [`RevocationList`]: the serials of revoked certificates, signed by the mesh CA that issued
//! them (a standard X.509 CRL), written by [`MeshCa::revoke`] and read by every node.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, RevokedCertParams};
use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::x509::to_system_time;
use super::{CertSerial, MeshCa, pem_encode};
use crate::error::Error;

/// How long after its issue a list made by [`MeshCa::revoke`] says the next one is due. Nodes
/// keep enforcing a list after that date (an old list still names revoked certificates); the
/// date only tells other X.509 tools how fresh the list is.
const NEXT_UPDATE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A signed list of revoked certificates: an X.509 certificate revocation list (CRL), PEM
/// label `X509 CRL`, that `openssl crl -text` can read.
///
/// Made with [`MeshCa::revoke`] where the CA key is, then copied to the nodes, which load it
/// with [`RevocationList::load`] (checking that a CA they trust signed it) and feed its
/// serials to their [`crate::Revocations`]. Each list carries a number that grows with every
/// new list, so an older copy is recognisable.
#[derive(Clone, Debug)]
pub struct RevocationList {
    der: CertificateRevocationListDer<'static>,
    number: u64,
    issued: SystemTime,
    entries: Vec<(CertSerial, SystemTime)>,
}

impl RevocationList {
    /// The default file name of a CA's list, next to `ca.pem`: `shoal cert revoke` writes it
    /// and `shoal serve` reads it.
    pub const FILE: &'static str = "revoked.crl";

    /// Reads a list from PEM and checks that one of the `trusted` CAs signed it.
    pub fn from_pem(pem_text: &str, trusted: &[MeshCa]) -> Result<Self, Error> {
        let der =
            CertificateRevocationListDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| {
                Error::Identity(format!(
                    "the revocation list PEM is unreadable (expected a `-----BEGIN X509 \
                     CRL-----` block): {e}"
                ))
            })?;
        Self::from_der(der, trusted)
    }

    /// Reads a DER-encoded list and checks that one of the `trusted` CAs signed it.
    pub fn from_der(
        der: CertificateRevocationListDer<'static>,
        trusted: &[MeshCa],
    ) -> Result<Self, Error> {
        let invalid = |e: String| Error::Identity(format!("invalid revocation list: {e}"));
        let (rest, crl) =
            CertificateRevocationList::from_der(&der).map_err(|e| invalid(e.to_string()))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes after its end", rest.len())));
        }
        let signer = trusted.iter().find_map(|ca| {
            let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).ok()?;
            let same_issuer = cert.subject().as_raw() == crl.issuer().as_raw();
            (same_issuer && crl.verify_signature(cert.public_key()).is_ok()).then_some(())
        });
        if signer.is_none() {
            return Err(Error::Identity(format!(
                "the revocation list was not signed by a trusted mesh CA (its issuer is `{}`)",
                crl.issuer()
            )));
        }
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let entries = crl
            .iter_revoked_certificates()
            .map(|revoked| {
                let at = to_system_time(revoked.revocation_date.timestamp());
                (CertSerial::from_bytes(revoked.raw_serial()), at)
            })
            .collect();
        let issued = to_system_time(crl.last_update().timestamp());
        Ok(Self {
            der,
            number,
            issued,
            entries,
        })
    }

    /// Loads a list from a PEM (or DER) file and checks that one of the `trusted` CAs signed
    /// it.
    pub fn load(path: impl AsRef<Path>, trusted: &[MeshCa]) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let list = if bytes.starts_with(b"-----BEGIN") {
            Self::from_pem(&String::from_utf8_lossy(&bytes), trusted)
        } else {
            Self::from_der(bytes.into(), trusted)
        };
        list.map_err(|e| match e {
            Error::Identity(msg) => Error::Identity(format!("{msg} (in {})", path.display())),
            other => other,
        })
    }

    /// Writes the list as PEM, replacing `path` in one step (a new file renamed over the old
    /// one), so a node watching the file never reads half a list.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        super::files::replace_file(path.as_ref(), self.to_pem().as_bytes(), false)
    }

    /// The list as PEM (`-----BEGIN X509 CRL-----`).
    pub fn to_pem(&self) -> String {
        pem_encode("X509 CRL", &self.der)
    }

    /// The serials it revokes.
    pub fn serials(&self) -> impl Iterator<Item = &CertSerial> {
        self.entries.iter().map(|(serial, _)| serial)
    }

    /// How many certificates it revokes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Its number: every list [`MeshCa::revoke`] makes is numbered one more than the list it
    /// extends.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// When it was signed.
    pub fn issued(&self) -> SystemTime {
        self.issued
    }
}

impl MeshCa {
    /// Signs a revocation list that revokes everything `previous` revokes plus `serials`,
    /// numbered one more than `previous` (1 without one).
    ///
    /// Revocation is for good: a certificate cannot be reinstated, issue a new one instead.
    /// `previous` must be a list of this CA (checked by its signature). Fails if this CA was
    /// loaded without its private key.
    pub fn revoke(
        &self,
        previous: Option<&RevocationList>,
        serials: impl IntoIterator<Item = CertSerial>,
    ) -> Result<RevocationList, Error> {
        let key = self.key.as_deref().ok_or_else(|| {
            Error::Identity(
                "this CA was loaded without its private key (ca.key), so it cannot sign a \
                 revocation list"
                    .into(),
            )
        })?;
        let now = SystemTime::now();
        let mut entries = match previous {
            Some(previous) => {
                // Re-read it under this CA alone: a list of another CA cannot be extended.
                RevocationList::from_der(previous.der.clone(), std::slice::from_ref(self))?.entries
            }
            None => Vec::new(),
        };
        for serial in serials {
            if !entries.iter().any(|(known, _)| *known == serial) {
                entries.push((serial, now));
            }
        }
        let number = previous.map_or(0, |p| p.number) + 1;

        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let at = |t: SystemTime| epoch + t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let params = CertificateRevocationListParams {
            this_update: at(now),
            next_update: at(now + NEXT_UPDATE),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|(serial, revoked_at)| RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(serial.as_bytes()),
                    revocation_time: at(*revoked_at),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer = Issuer::from_ca_cert_der(self.cert_der(), key).map_err(|e| {
            Error::Identity(format!(
                "the CA certificate cannot sign revocation lists: {e}"
            ))
        })?;
        let crl = params
            .signed_by(&issuer)
            .map_err(|e| Error::Identity(format!("could not sign the revocation list: {e}")))?;
        RevocationList::from_der(crl.der().clone(), std::slice::from_ref(self))
    }
}
