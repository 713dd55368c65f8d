//! Who a node is, and whom it trusts: the mesh certificate authority and node certificates.
//!
//! Every node of a mesh trusts exactly one certificate authority, the [`MeshCa`], and proves
//! who it is with an [`Identity`]: a certificate that CA issued for one service, plus its
//! private key. Every node certificate carries two DNS names:
//!
//! * `shoal.mesh`, shared by every node, which clients check when they dial (so any node of
//!   the mesh can serve any other), and
//! * `<service>.svc.shoal.mesh`, which names the service the certificate was issued for;
//!   [`Identity::service`] reads it back, and the node uses it to check that a peer really
//!   is an instance of the service it claims to be.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shoal::{Identity, MeshCa};
//!
//! // `shoal ca init --dir ./ca`
//! let ca = MeshCa::generate("Shoal mesh CA")?;
//! ca.save("./ca")?;
//!
//! // `shoal cert issue --ca ./ca --service orders --out ./orders`
//! let ca = MeshCa::load("./ca")?;
//! let identity = ca.issue("orders")?;
//! identity.save("./orders/node.pem", "./orders/node.key")?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
pub use crl::RevocationList;
use encoding::parse_cert_pem;
pub(crate) use encoding::pem_encode;
pub use revocations::Revocations;
pub(crate) use x509::Parsed;
pub use x509::{CertSerial, CertificateInfo};

mod crl;
mod encoding;
mod files;
mod revocations;
#[cfg(test)]
mod tests;
mod x509;

/// The DNS name every node certificate carries; clients dial with this server name.
pub(crate) const MESH_DNS_NAME: &str = "shoal.mesh";

/// The suffix of the per-service DNS name: `<service>.svc.shoal.mesh`.
const SERVICE_DNS_SUFFIX: &str = ".svc.shoal.mesh";

/// How long a CA made by [`MeshCa::generate`] is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How long a node certificate made by [`MeshCa::issue`] is valid.
const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Certificates start being valid this long before they were made, to absorb clock skew
/// between the machine that issued them and the machines that check them.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// The last second an X.509 date can name, 9999-12-31T23:59:59Z, in seconds since the Unix
/// epoch (GeneralizedTime has four digits for the year).
const LAST_X509_SECOND: u64 = 253_402_300_799;

/// Checks that `service` can be used as a service name in a certificate: 1 to 63
/// characters from `a-z`, `0-9` and `-`, not starting or ending with `-` (a DNS label).
pub(crate) fn validate_service_name(service: &str) -> Result<(), Error> {
    if service.is_empty() {
        return Err(Error::Identity("the service name is empty".into()));
    }
    if service.len() > 63 {
        return Err(Error::Identity(format!(
            "the service name `{service}` is {} characters long; at most 63 are allowed",
            service.len()
        )));
    }
    if let Some(bad) = service
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(Error::Identity(format!(
            "the service name `{service}` contains {bad:?}; only lowercase letters a-z, \
             digits 0-9 and `-` are allowed"
        )));
    }
    if service.starts_with('-') || service.ends_with('-') {
        return Err(Error::Identity(format!(
            "the service name `{service}` must not start or end with `-`"
        )));
    }
    Ok(())
}

/// The mesh certificate authority: the one certificate every node trusts.
///
/// A `MeshCa` always holds the CA certificate. It holds the CA's private key too when it was
/// made with [`MeshCa::generate`] or loaded with its key ([`MeshCa::from_pem_with_key`],
/// or [`MeshCa::load`] from a folder that has `ca.key`); only then can it
/// [`issue`](MeshCa::issue) node certificates. Running nodes need only the certificate.
///
/// Cloning is cheap. `Debug` never prints the private key.
#[derive(Clone)]
pub struct MeshCa {
    cert: CertificateDer<'static>,
    key: Option<Arc<KeyPair>>,
}

impl MeshCa {
    /// The name of the CA certificate file in a CA folder ([`MeshCa::save`], [`MeshCa::load`]).
    pub const CERT_FILE: &'static str = "ca.pem";
    /// The name of the CA private key file in a CA folder ([`MeshCa::save`], [`MeshCa::load`]).
    pub const KEY_FILE: &'static str = "ca.key";

    /// Creates a new self-signed mesh CA with a fresh ECDSA P-256 key, valid for ten years.
    ///
    /// `common_name` is only a label for humans (it becomes the certificate's subject CN).
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        if common_name.trim().is_empty() {
            return Err(Error::Identity("the CA common name is empty".into()));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Identity(format!("could not generate the CA key: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        set_validity(&mut params, now - BACKDATE, now + CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::Identity(format!("could not create the CA certificate: {e}")))?;
        Ok(Self {
            cert: cert.der().clone(),
            key: Some(Arc::new(key)),
        })
    }

    /// Loads a CA certificate from PEM, to trust it. The result cannot issue certificates.
    ///
    /// The PEM must hold exactly one certificate, and it must be a CA certificate.
    pub fn from_pem(cert_pem: &str) -> Result<Self, Error> {
        let certs = parse_cert_pem(cert_pem, "the CA certificate")?;
        let [cert] = <[_; 1]>::try_from(certs).map_err(|certs| {
            Error::Identity(format!(
                "the CA certificate PEM holds {} certificates; exactly one is expected",
                certs.len()
            ))
        })?;
        let parsed = Parsed::new(&cert).map_err(|e| context("the CA certificate", e))?;
        if !parsed.is_ca {
            return Err(Error::Identity(
                "the CA certificate is not a CA certificate (it lacks BasicConstraints \
                 cA=TRUE); was a node certificate given instead of ca.pem?"
                    .into(),
            ));
        }
        Ok(Self { cert, key: None })
    }

    /// Loads a CA certificate and its private key from PEM, so that it can issue certificates.
    ///
    /// The key must be a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as written by
    /// [`MeshCa::save`]) and must belong to the certificate.
    pub fn from_pem_with_key(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let mut ca = Self::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| Error::Identity(format!("the CA private key is unusable: {e}")))?;
        let parsed = Parsed::new(&ca.cert).map_err(|e| context("the CA certificate", e))?;
        if key.subject_public_key_info() != parsed.spki {
            return Err(Error::Identity(
                "the CA private key does not belong to the CA certificate".into(),
            ));
        }
        ca.key = Some(Arc::new(key));
        Ok(ca)
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The CA private key, PEM-encoded (PKCS#8), or `None` if this CA was loaded without it.
    ///
    /// This is the secret that lets its holder mint identities for any service; keep it
    /// off the machines that run nodes.
    pub fn key_pem(&self) -> Option<String> {
        self.key.as_ref().map(|key| key.serialize_pem())
    }

    /// Whether this CA holds its private key and so can [`issue`](MeshCa::issue) certificates.
    pub fn can_issue(&self) -> bool {
        self.key.is_some()
    }

    /// The CA certificate, DER-encoded.
    pub(crate) fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues a node certificate for an instance of `service`, with a fresh ECDSA P-256 key.
    ///
    /// The certificate is valid for one year for both TLS server and client authentication.
    /// Its DNS names are `shoal.mesh` and `<service>.svc.shoal.mesh`, and its subject CN is
    /// `service`. `service` must be a DNS label: 1 to 63 characters from `a-z`, `0-9` and
    /// `-`, not starting or ending with `-`. Its serial is 16 random bytes.
    ///
    /// Fails if this CA was loaded without its private key.
    pub fn issue(&self, service: &str) -> Result<Identity, Error> {
        self.issue_valid_for(service, NODE_VALIDITY)
    }

    /// [`MeshCa::issue`] with another lifetime: the certificate is valid from an hour ago
    /// (clock skew between machines) until `lifetime` from now. Short-lived certificates,
    /// renewed and reloaded ([`crate::Node::reload_identity`]) well before they expire, limit
    /// what a leaked key is worth.
    pub fn issue_valid_for(&self, service: &str, lifetime: Duration) -> Result<Identity, Error> {
        if lifetime.is_zero() {
            return Err(Error::Identity(
                "a certificate's lifetime must be longer than zero".into(),
            ));
        }
        let now = SystemTime::now();
        let not_after = now.checked_add(lifetime).ok_or_else(past_9999)?;
        self.issue_valid_between(service, now - BACKDATE, not_after)
    }

    /// [`MeshCa::issue`] valid from `not_before` to `not_after` (whole seconds). A certificate
    /// that starts later can be handed out ahead of a planned rotation; peers refuse it, and
    /// a node will not load it, before `not_before` ("not valid yet") and after `not_after`
    /// ("expired").
    pub fn issue_valid_between(
        &self,
        service: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Identity, Error> {
        validate_service_name(service)?;
        if not_after <= not_before {
            return Err(Error::Identity(
                "a certificate's validity must end after it starts".into(),
            ));
        }
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if secs > LAST_X509_SECOND {
            return Err(past_9999());
        }
        let ca_key = self.key.as_deref().ok_or_else(|| {
            Error::Identity(
                "this CA was loaded without its private key (ca.key), so it can check \
                 certificates but not issue them"
                    .into(),
            )
        })?;
        let ca_subject = Parsed::new(&self.cert)
            .map_err(|e| context("the CA certificate", e))?
            .subject;
        // The issuer's name and key identifier are read back from the CA certificate itself.
        let issuer = Issuer::from_ca_cert_der(&self.cert, ca_key).map_err(|e| {
            Error::Identity(format!("the CA certificate cannot issue certificates: {e}"))
        })?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Identity(format!("could not generate a node key: {e}")))?;
        let mut params = CertificateParams::new(vec![
            MESH_DNS_NAME.to_owned(),
            format!("{service}{SERVICE_DNS_SUFFIX}"),
        ])
        .map_err(|e| Error::Identity(format!("invalid certificate name for `{service}`: {e}")))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, service);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, not_before, not_after);
        let cert = params.signed_by(&key, &issuer).map_err(|e| {
            Error::Identity(format!(
                "could not sign the certificate for `{service}`: {e}"
            ))
        })?;

        let cert = cert.der().clone();
        let issued = Parsed::new(&cert).map_err(|e| context("the issued certificate", e))?;
        if issued.issuer != ca_subject {
            return Err(Error::Identity(
                "the issued certificate's issuer name does not match the CA certificate's \
                 subject; issue certificates with a CA made by `shoal ca init`"
                    .into(),
            ));
        }
        Ok(Identity {
            chain: Arc::from(vec![cert]),
            key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
            info: issued.info,
        })
    }
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject = Parsed::new(&self.cert).ok().and_then(|p| p.common_name);
        f.debug_struct("MeshCa")
            .field("subject_cn", &subject)
            .field("has_key", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// A node's identity: its certificate (chain) and private key.
///
/// Made by [`MeshCa::issue`] or loaded from PEM. Cloning is cheap. `Debug` never prints the
/// private key.
#[derive(Clone)]
pub struct Identity {
    chain: Arc<[CertificateDer<'static>]>,
    key: Arc<PrivateKeyDer<'static>>,
    info: CertificateInfo,
}

impl Identity {
    /// Loads an identity from PEM: one or more certificates (the node certificate first) and
    /// its private key (PKCS#8, SEC1 or PKCS#1).
    ///
    /// Checks that the key is usable and belongs to the certificate. Does not check who
    /// issued the certificate; that happens when the TLS configuration is built.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let chain = parse_cert_pem(cert_pem, "the node certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
            pem::Error::NoItemsFound => Error::Identity(
                "the node private key PEM holds no private key (expected a \
                 `-----BEGIN PRIVATE KEY-----` block)"
                    .into(),
            ),
            e => Error::Identity(format!("the node private key PEM is unreadable: {e}")),
        })?;
        let info = Parsed::new(&chain[0])
            .map_err(|e| context("the node certificate", e))?
            .info;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| match e {
                rustls::Error::InconsistentKeys(_) => Error::Identity(
                    "the node private key does not belong to the node certificate".into(),
                ),
                e => Error::Identity(format!("the node certificate or key is unusable: {e}")),
            },
        )?;
        Ok(Self {
            chain: Arc::from(chain),
            key: Arc::new(key),
            info,
        })
    }

    /// The certificate chain, PEM-encoded, node certificate first.
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|cert| pem_encode("CERTIFICATE", cert))
            .collect()
    }

    /// The private key, PEM-encoded. This is a secret.
    pub fn key_pem(&self) -> String {
        let (label, der) = match &*self.key {
            PrivateKeyDer::Pkcs1(key) => ("RSA PRIVATE KEY", key.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(key) => ("EC PRIVATE KEY", key.secret_sec1_der()),
            PrivateKeyDer::Pkcs8(key) => ("PRIVATE KEY", key.secret_pkcs8_der()),
            // `PrivateKeyDer` is non-exhaustive; every variant that exists today is above.
            _ => ("PRIVATE KEY", &[][..]),
        };
        pem_encode(label, der)
    }

    /// The service this identity was issued for: the `<service>` of its
    /// `<service>.svc.shoal.mesh` DNS name, or `None` if the certificate has no such name.
    pub fn service(&self) -> Option<&str> {
        self.info.service.as_deref()
    }

    /// What the node certificate says: service, serial, validity.
    pub fn certificate(&self) -> &CertificateInfo {
        &self.info
    }

    /// The certificate chain, DER-encoded, node certificate first (never empty).
    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.to_vec()
    }

    /// The private key, DER-encoded.
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("service", &self.info.service)
            .field("serial", &self.info.serial)
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The DNS names of a certificate (tests only).
#[cfg(test)]
pub(crate) fn dns_names_for_tests(cert: &CertificateDer<'_>) -> Vec<String> {
    Parsed::new(cert)
        .map(|parsed| parsed.dns_names)
        .unwrap_or_default()
}

/// Names the certificate an identity error is about: "the CA certificate is not a valid ...".
fn context(what: &str, err: Error) -> Error {
    match err {
        Error::Identity(msg) => Error::Identity(format!("{what} is {msg}")),
        other => other,
    }
}

/// 16 random bytes, the first below 0x80 so the DER integer stays positive and 16 bytes long.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

/// The error of a validity that ends after the last date a certificate can hold.
fn past_9999() -> Error {
    Error::Identity(
        "a certificate cannot be valid past the end of the year 9999 (X.509 dates have \
         four-digit years): ask for a shorter lifetime"
            .into(),
    )
}

/// Makes `params` valid from `not_before` to `not_after` (both checked: up to the year 9999).
fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    params.not_before = epoch + since_epoch(not_before);
    params.not_after = epoch + since_epoch(not_after);
}
