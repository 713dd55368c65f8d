//! [`LiveTls`]: the node's certificate, its trusted mesh CAs and its revocations, read by every
//! handshake and swappable while the node runs.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use super::{SERVER_NAME, provider};
use crate::error::Error;
use crate::identity::{CertSerial, Identity, MeshCa, Parsed, Revocations};

/// What a node presents and whom it trusts; cheap to clone, shared by the rustls configurations
/// (as certificate resolver and as certificate verifier) and the node.
///
/// A reload builds new [`Material`] and swaps it in: handshakes that start afterwards use it,
/// handshakes and connections already under way keep what they had.
#[derive(Clone)]
pub(crate) struct LiveTls {
    inner: Arc<Inner>,
}

struct Inner {
    provider: Arc<CryptoProvider>,
    material: watch::Sender<Arc<Material>>,
    revocations: Revocations,
    /// Held while a reload builds on the current material, so two reloads at once (a new
    /// certificate and new CAs, say) cannot undo each other.
    reloading: std::sync::Mutex<()>,
}

/// One generation of TLS material, checked as a whole before it is used.
pub(crate) struct Material {
    pub(crate) identity: Identity,
    pub(crate) trust: Vec<MeshCa>,
    certified: Arc<CertifiedKey>,
    servers: Arc<WebPkiServerVerifier>,
    clients: Arc<dyn ClientCertVerifier>,
}

impl LiveTls {
    /// Checks `identity` against `trust` and `revocations` (see [`LiveTls::reload`]).
    pub(crate) fn new(
        identity: Identity,
        trust: Vec<MeshCa>,
        revocations: Revocations,
    ) -> Result<Self, Error> {
        let provider = provider();
        let material = Material::new(identity, trust, &provider, &revocations)?;
        Ok(Self {
            inner: Arc::new(Inner {
                provider,
                material: watch::Sender::new(Arc::new(material)),
                revocations,
                reloading: std::sync::Mutex::default(),
            }),
        })
    }

    /// Replaces the certificate, the trusted CAs, or both (`None` keeps the current one).
    ///
    /// The new pair is checked first, as at start: the certificate must be valid now, issued
    /// by one of the trusted CAs, for both server and client use, its key must match, and it
    /// must not be revoked. On error nothing changes.
    pub(crate) fn reload(
        &self,
        identity: Option<Identity>,
        trust: Option<Vec<MeshCa>>,
    ) -> Result<(), Error> {
        let _one_at_a_time = crate::sync::lock(&self.inner.reloading);
        let current = self.material();
        let identity = identity.unwrap_or_else(|| current.identity.clone());
        let trust = trust.unwrap_or_else(|| current.trust.clone());
        let material = Material::new(
            identity,
            trust,
            &self.inner.provider,
            &self.inner.revocations,
        )?;
        self.inner.material.send_replace(Arc::new(material));
        Ok(())
    }

    /// The material in force now.
    pub(crate) fn material(&self) -> Arc<Material> {
        Arc::clone(&self.inner.material.borrow())
    }

    /// A receiver that wakes at every reload.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Material>> {
        self.inner.material.subscribe()
    }

    /// The revocations every handshake checks.
    pub(crate) fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    pub(super) fn provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.inner.provider)
    }

    /// The verifier of peers' certificates, for either side of a handshake.
    pub(super) fn verifier(&self) -> Arc<PeerVerifier> {
        Arc::new(PeerVerifier(self.clone()))
    }

    /// Refuses a certificate whose serial is revoked (its signature and validity were checked
    /// already).
    fn check_revocation(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let info = Parsed::new(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?
            .info;
        if !self.inner.revocations.is_revoked(&info.serial) {
            return Ok(());
        }
        let refused = RevokedCertificate {
            serial: info.serial,
            service: info.service,
        };
        tracing::debug!("refused a handshake: {refused:?}");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(refused)),
        )))
    }
}

impl fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let material = self.material();
        f.debug_struct("LiveTls")
            .field("identity", &material.identity)
            .field("trust", &material.trust)
            .field("revocations", &self.inner.revocations)
            .finish()
    }
}

impl Material {
    fn new(
        identity: Identity,
        trust: Vec<MeshCa>,
        provider: &Arc<CryptoProvider>,
        revocations: &Revocations,
    ) -> Result<Self, Error> {
        if trust.is_empty() {
            return Err(Error::Config(
                "no mesh CA to trust: give at least one (NodeBuilder::trust)".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        for ca in &trust {
            roots.add(ca.cert_der().clone()).map_err(|e| {
                Error::Identity(format!(
                    "the mesh CA certificate cannot be used as a trust anchor: {e}"
                ))
            })?;
        }
        let roots = Arc::new(roots);
        let unusable_ca =
            |e: String| Error::Identity(format!("the mesh CA cannot verify certificates: {e}"));
        let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| unusable_ca(e.to_string()))?;
        let clients = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| unusable_ca(e.to_string()))?;
        let certified = CertifiedKey::from_der(identity.cert_chain(), identity.key_der(), provider)
            .map_err(|e| {
                Error::Identity(format!("the node certificate or key is unusable: {e}"))
            })?;

        // This node's own certificate must pass what its peers will check, so a misconfigured
        // node fails at start (or its reload fails) instead of at every handshake.
        let chain = identity.cert_chain();
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| Error::Identity("the node certificate chain is empty".into()))?;
        let now = validity_now();
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| Error::Config(format!("invalid server name {SERVER_NAME}: {e}")))?;
        servers
            .verify_server_cert(leaf, rest, &name, &[], now)
            .map(drop)
            .and_then(|()| clients.verify_client_cert(leaf, rest, now).map(drop))
            .map_err(own_certificate_refused)?;
        let serial = &identity.certificate().serial;
        if revocations.is_revoked(serial) {
            return Err(Error::Identity(format!(
                "this node's certificate (serial {serial}) is revoked; issue a new one"
            )));
        }
        Ok(Self {
            identity,
            trust,
            certified: Arc::new(certified),
            servers,
            clients,
        })
    }
}

/// Says why this node's own certificate is unusable, in the words of the check that failed.
fn own_certificate_refused(e: rustls::Error) -> Error {
    use CertificateError::{
        BadSignature, Expired, ExpiredContext, NotValidYet, NotValidYetContext, UnknownIssuer,
    };
    let why = match &e {
        rustls::Error::InvalidCertificate(Expired | ExpiredContext { .. }) => {
            "has expired; issue a new one (`shoal cert rotate`)"
        }
        rustls::Error::InvalidCertificate(NotValidYet | NotValidYetContext { .. }) => {
            "is not valid yet; is this machine's clock right?"
        }
        #[allow(deprecated)]
        rustls::Error::InvalidCertificate(UnknownIssuer | BadSignature) => {
            "was not issued by a trusted mesh CA"
        }
        _ => "is not accepted by the trusted mesh CAs",
    };
    Error::Identity(format!("this node's certificate {why} ({e})"))
}

/// The reason a revoked certificate is refused; it reaches both ends of the handshake.
struct RevokedCertificate {
    serial: CertSerial,
    service: Option<String>,
}

// rustls shows this error with `Debug`, so `Debug` is the sentence.
impl fmt::Debug for RevokedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate {} ", self.serial)?;
        if let Some(service) = &self.service {
            write!(f, "(service `{service}`) ")?;
        }
        write!(f, "is revoked")
    }
}

impl fmt::Display for RevokedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for RevokedCertificate {}

impl ResolvesServerCert for LiveTls {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.material().certified))
    }
}

impl rustls::client::ResolvesClientCert for LiveTls {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.material().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks a peer's certificate with the trusted CAs of the moment, then against the
/// revocations. Signatures over the handshake are checked with the provider's algorithms.
#[derive(Debug)]
pub(crate) struct PeerVerifier(LiveTls);

impl PeerVerifier {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.0.inner.provider.signature_verification_algorithms
    }
}

/// The time certificates are checked against: now, rounded *up* to the whole second. webpki
/// compares whole seconds and takes a certificate as valid through the second of its
/// `notAfter` (rustls passes now rounded down), while this node cuts off a connection whose
/// peer's certificate expired as soon as `notAfter` has passed (`cert_lifecycle`): rounded
/// down, a peer cut off for expiry could dial in again for the rest of that second.
fn validity_now() -> UnixTime {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.0.material();
        material.servers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            validity_now(),
        )?;
        self.0.check_revocation(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would have to borrow from material that a reload may replace; Shoal's
        // clients present their one certificate whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let material = self.0.material();
        material
            .clients
            .verify_client_cert(end_entity, intermediates, validity_now())?;
        self.0.check_revocation(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}
