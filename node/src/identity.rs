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
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

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
        set_validity(&mut params, CA_VALIDITY);
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
        let fields = der::parse_certificate(&cert).ok_or_else(|| {
            Error::Identity("the CA certificate is not a valid X.509 certificate".into())
        })?;
        if !fields.is_ca() {
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
        let fields = der::parse_certificate(&ca.cert).ok_or_else(|| {
            Error::Identity("the CA certificate is not a valid X.509 certificate".into())
        })?;
        if key.subject_public_key_info() != fields.spki {
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
    /// `-`, not starting or ending with `-`.
    ///
    /// Fails if this CA was loaded without its private key.
    pub fn issue(&self, service: &str) -> Result<Identity, Error> {
        validate_service_name(service)?;
        let ca_key = self.key.as_deref().ok_or_else(|| {
            Error::Identity(
                "this CA was loaded without its private key (ca.key), so it can check \
                 certificates but not issue them"
                    .into(),
            )
        })?;
        let ca_fields = der::parse_certificate(&self.cert).ok_or_else(|| {
            Error::Identity("the CA certificate is not a valid X.509 certificate".into())
        })?;

        // The issuer of the new certificate must be byte-for-byte the subject of the CA
        // certificate, so rebuild that name from the CA certificate itself.
        let mut issuer_params = CertificateParams::default();
        issuer_params.distinguished_name =
            der::distinguished_name(ca_fields.subject).ok_or_else(|| {
                Error::Identity(
                    "the CA certificate's subject name uses an encoding Shoal cannot \
                     reproduce; issue certificates with a CA made by `shoal ca init`"
                        .into(),
                )
            })?;
        issuer_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let issuer = Issuer::new(issuer_params, ca_key);

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
        set_validity(&mut params, NODE_VALIDITY);
        let cert = params.signed_by(&key, &issuer).map_err(|e| {
            Error::Identity(format!(
                "could not sign the certificate for `{service}`: {e}"
            ))
        })?;

        let cert = cert.der().clone();
        let issued = der::parse_certificate(&cert);
        if issued.map(|fields| fields.issuer) != Some(ca_fields.subject) {
            return Err(Error::Identity(
                "the issued certificate's issuer name does not match the CA certificate's \
                 subject; issue certificates with a CA made by `shoal ca init`"
                    .into(),
            ));
        }
        Ok(Identity {
            chain: Arc::from(vec![cert]),
            key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
            service: Some(service.to_owned()),
        })
    }

    /// Loads a CA from a folder written by [`MeshCa::save`].
    ///
    /// Reads `ca.pem`, and `ca.key` if the folder has one: with the key the CA can issue
    /// certificates, without it the CA can only be trusted.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let cert_path = dir.join(Self::CERT_FILE);
        let cert_pem = read_file(&cert_path)?;
        let key_path = dir.join(Self::KEY_FILE);
        match fs::read_to_string(&key_path) {
            Ok(key_pem) => Self::from_pem_with_key(&cert_pem, &key_pem)
                .map_err(|e| in_files(e, &[&cert_path, &key_path])),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::from_pem(&cert_pem).map_err(|e| in_files(e, &[&cert_path]))
            }
            Err(source) => Err(Error::Io {
                path: key_path,
                source,
            }),
        }
    }

    /// Loads a CA certificate (trust only, no key) from one PEM file, such as a copy of
    /// `ca.pem` handed to the machines that run nodes.
    pub fn load_cert(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        Self::from_pem(&read_file(path)?).map_err(|e| in_files(e, &[path]))
    }

    /// Writes the CA into folder `dir` (created if missing): `ca.pem`, and `ca.key` (file
    /// mode 0600 on Unix) if this CA holds its key.
    ///
    /// Refuses to overwrite an existing `ca.pem` or `ca.key`: replacing a mesh CA makes every
    /// certificate it issued useless, so that must be a deliberate act (delete the files
    /// first).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let cert_path = dir.join(Self::CERT_FILE);
        let key_path = dir.join(Self::KEY_FILE);
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(Error::Io {
                    path: path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a mesh CA already exists here; refusing to overwrite it",
                    ),
                });
            }
        }
        if let Some(key) = &self.key {
            write_file(&key_path, key.serialize_pem().as_bytes(), true, false)?;
        }
        write_file(&cert_path, self.cert_pem().as_bytes(), false, false)
    }
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let subject =
            der::parse_certificate(&self.cert).and_then(|fields| der::common_name(fields.subject));
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
    service: Option<String>,
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
        let Some(leaf) = der::parse_certificate(&chain[0]) else {
            return Err(Error::Identity(
                "the node certificate is not a valid X.509 certificate".into(),
            ));
        };
        let service = leaf.service();
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
            service,
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
        self.service.as_deref()
    }

    /// The certificate chain, DER-encoded, node certificate first (never empty).
    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.to_vec()
    }

    /// The private key, DER-encoded.
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Loads an identity from a certificate PEM file and a private key PEM file.
    pub fn load(cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> Result<Self, Error> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| in_files(e, &[cert_path, key_path]))
    }

    /// Writes the certificate chain and private key as PEM files, creating missing parent
    /// folders and replacing existing files. The key file gets mode 0600 on Unix.
    pub fn save(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), Error> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        for path in [cert_path, key_path] {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|source| Error::Io {
                    path: parent.to_owned(),
                    source,
                })?;
            }
        }
        write_file(key_path, self.key_pem().as_bytes(), true, true)?;
        write_file(cert_path, self.cert_pem().as_bytes(), false, true)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("service", &self.service)
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The service named by a certificate's `<service>.svc.shoal.mesh` DNS name, if any.
pub(crate) fn service_of_cert(cert: &CertificateDer<'_>) -> Option<String> {
    der::parse_certificate(cert)?.service()
}

/// The DNS names of a certificate (tests only).
#[cfg(test)]
pub(crate) fn dns_names_for_tests(cert: &CertificateDer<'_>) -> Vec<String> {
    der::parse_certificate(cert)
        .map(|fields| fields.dns_names().into_iter().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Makes `params` valid from `BACKDATE` ago until `lifetime` from now.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + lifetime;
}

/// All certificates in `pem`; at least one.
fn parse_cert_pem(pem_text: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Identity(format!("{what} PEM is unreadable: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Identity(format!(
            "{what} PEM holds no certificate (expected a `-----BEGIN CERTIFICATE-----` block)"
        )));
    }
    Ok(certs)
}

/// PEM-encodes `der` with the given label, 64 base64 characters a line.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read_file(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path`. `secret` files get mode 0600 on Unix (also when they already
/// existed). Without `overwrite`, fails if `path` exists.
fn write_file(path: &Path, contents: &[u8], secret: bool, overwrite: bool) -> Result<(), Error> {
    let io_err = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_err)?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Adds the file names to an identity error, so the user knows which files are wrong.
fn in_files(err: Error, paths: &[&Path]) -> Error {
    match err {
        Error::Identity(msg) => {
            let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            Error::Identity(format!("{msg} (in {})", files.join(", ")))
        }
        other => other,
    }
}

/// Just enough DER to read the parts of an X.509 certificate Shoal needs: subject and issuer
/// names, public key, DNS names and whether it is a CA. Anything unexpected yields `None`.
mod der {
    use rcgen::{DistinguishedName, DnType};

    use super::{DnValue, Ia5String, PrintableString, SERVICE_DNS_SUFFIX, validate_service_name};

    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    const UTF8_STRING: u8 = 0x0c;
    const PRINTABLE_STRING: u8 = 0x13;
    const IA5_STRING: u8 = 0x16;
    const VERSION: u8 = 0xa0;
    const EXTENSIONS: u8 = 0xa3;
    const DNS_NAME: u8 = 0x82;

    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

    /// One element: its tag, its content, and its whole encoding.
    #[derive(Clone, Copy)]
    struct Tlv<'a> {
        tag: u8,
        content: &'a [u8],
    }

    /// Reads one element from the front of `input`; returns it, its whole encoding, and the
    /// rest. Only single-byte tags and definite lengths (as DER requires).
    fn read(input: &[u8]) -> Option<(Tlv<'_>, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        let whole = &input[..input.len() - rest.len()];
        Some((Tlv { tag, content }, whole, rest))
    }

    /// Reads one element that must have tag `tag`.
    fn expect(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8], &[u8])> {
        read(input).filter(|(tlv, _, _)| tlv.tag == tag)
    }

    /// The parts of a certificate Shoal uses.
    pub(super) struct Certificate<'a> {
        /// The issuer name, whole encoding.
        pub(super) issuer: &'a [u8],
        /// The subject name, whole encoding.
        pub(super) subject: &'a [u8],
        /// The SubjectPublicKeyInfo, whole encoding.
        pub(super) spki: &'a [u8],
        /// The content of the extensions SEQUENCE, if any.
        extensions: &'a [u8],
    }

    /// Splits a DER certificate into the parts Shoal uses.
    pub(super) fn parse_certificate(der: &[u8]) -> Option<Certificate<'_>> {
        let (cert, _, rest) = expect(der, SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        let (tbs, _, _) = expect(cert.content, SEQUENCE)?;
        let mut p = tbs.content;
        if p.first() == Some(&VERSION) {
            p = read(p)?.2;
        }
        let (_serial, _, p) = expect(p, INTEGER)?;
        let (_signature, _, p) = expect(p, SEQUENCE)?;
        let (_, issuer, p) = expect(p, SEQUENCE)?;
        let (_validity, _, p) = expect(p, SEQUENCE)?;
        let (_, subject, p) = expect(p, SEQUENCE)?;
        let (_, spki, mut p) = expect(p, SEQUENCE)?;
        let mut extensions: &[u8] = &[];
        while !p.is_empty() {
            let (field, _, rest) = read(p)?;
            if field.tag == EXTENSIONS {
                extensions = expect(field.content, SEQUENCE)?.0.content;
            }
            p = rest;
        }
        Some(Certificate {
            issuer,
            subject,
            spki,
            extensions,
        })
    }

    impl<'a> Certificate<'a> {
        /// The value (content of the OCTET STRING) of the extension with this OID.
        fn extension(&self, oid: &[u8]) -> Option<&'a [u8]> {
            let mut p = self.extensions;
            while !p.is_empty() {
                let (ext, _, rest) = expect(p, SEQUENCE)?;
                p = rest;
                let (id, _, mut q) = expect(ext.content, OID)?;
                if id.content != oid {
                    continue;
                }
                if q.first() == Some(&BOOLEAN) {
                    q = read(q)?.2;
                }
                return Some(expect(q, OCTET_STRING)?.0.content);
            }
            None
        }

        /// Whether BasicConstraints says cA=TRUE.
        pub(super) fn is_ca(&self) -> bool {
            let Some(value) = self.extension(OID_BASIC_CONSTRAINTS) else {
                return false;
            };
            let Some((constraints, _, _)) = expect(value, SEQUENCE) else {
                return false;
            };
            matches!(
                expect(constraints.content, BOOLEAN),
                Some((flag, _, _)) if flag.content.iter().any(|&b| b != 0)
            )
        }

        /// The DNS names of the subjectAltName extension.
        pub(super) fn dns_names(&self) -> Vec<&'a str> {
            let mut names = Vec::new();
            let Some(value) = self.extension(OID_SUBJECT_ALT_NAME) else {
                return names;
            };
            let Some((general_names, _, _)) = expect(value, SEQUENCE) else {
                return names;
            };
            let mut p = general_names.content;
            while let Some((name, _, rest)) = read(p) {
                if name.tag == DNS_NAME {
                    names.extend(std::str::from_utf8(name.content).ok());
                }
                p = rest;
            }
            names
        }

        /// The first valid `<service>` of a `<service>.svc.shoal.mesh` DNS name.
        pub(super) fn service(&self) -> Option<String> {
            self.dns_names()
                .into_iter()
                .filter_map(|name| name.strip_suffix(SERVICE_DNS_SUFFIX))
                .find(|service| validate_service_name(service).is_ok())
                .map(str::to_owned)
        }
    }

    /// One attribute of a Name: OID content, string tag, string bytes.
    type Attribute<'a> = (&'a [u8], u8, &'a [u8]);

    /// The attributes of a Name, in order.
    fn attributes(name: &[u8]) -> Option<Vec<Attribute<'_>>> {
        let (name, _, _) = expect(name, SEQUENCE)?;
        let mut attrs = Vec::new();
        let mut p = name.content;
        while !p.is_empty() {
            let (rdn, _, rest) = expect(p, SET)?;
            p = rest;
            let mut q = rdn.content;
            while !q.is_empty() {
                let (attr, _, rest) = expect(q, SEQUENCE)?;
                q = rest;
                let (oid, _, value) = expect(attr.content, OID)?;
                let (value, _, _) = read(value)?;
                attrs.push((oid.content, value.tag, value.content));
            }
        }
        Some(attrs)
    }

    /// The first common name of a Name, for display.
    pub(super) fn common_name(name: &[u8]) -> Option<String> {
        attributes(name)?
            .into_iter()
            .find(|(oid, _, _)| *oid == OID_COMMON_NAME)
            .map(|(_, _, value)| String::from_utf8_lossy(value).into_owned())
    }

    /// Rebuilds a Name as an rcgen [`DistinguishedName`] (UTF8, Printable and IA5 strings
    /// only). The caller checks that rcgen encodes it back to the same bytes.
    pub(super) fn distinguished_name(name: &[u8]) -> Option<DistinguishedName> {
        let mut dn = DistinguishedName::new();
        for (oid, tag, value) in attributes(name)? {
            let value = std::str::from_utf8(value).ok()?;
            let value = match tag {
                UTF8_STRING => DnValue::Utf8String(value.to_owned()),
                PRINTABLE_STRING => {
                    DnValue::PrintableString(PrintableString::try_from(value).ok()?)
                }
                IA5_STRING => DnValue::Ia5String(Ia5String::try_from(value).ok()?),
                _ => return None,
            };
            dn.push(DnType::from_oid(&oid_arcs(oid)?), value);
        }
        Some(dn)
    }

    /// Decodes the content of an OBJECT IDENTIFIER into its arcs.
    fn oid_arcs(content: &[u8]) -> Option<Vec<u64>> {
        let mut arcs = Vec::new();
        let mut value: u64 = 0;
        for &byte in content {
            value = value.checked_mul(128)? | u64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
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
        (content.last().is_some_and(|b| b & 0x80 == 0)).then_some(arcs)
    }
}
