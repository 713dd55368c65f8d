//! Throw-away PKI for the benchmarks: one CA and leaf certificates signed by it, made with
//! rcgen, plus the rustls configurations for **mutual** TLS (the server requires and
//! verifies a client certificate — the same handshake and per-packet crypto Shoal pays).
//!
//! Everything is exposed both as rcgen types (PEM/DER, to feed Shoal's own configuration)
//! and as rustls types (`CertificateDer`, `PrivateKeyDer`, `RootCertStore`,
//! `ServerConfig`, `ClientConfig`). Keys are ECDSA P-256 (rcgen's default).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::error::BenchResult;

/// The DNS name every leaf certificate carries and clients verify (`"localhost"`).
pub const SERVER_NAME: &str = "localhost";

/// The certificate authority: its self-signed certificate and the issuer (key + name)
/// that signs leaves.
pub struct CertAuthority {
    /// The CA certificate (rcgen type; `.der()` / `.pem()`).
    pub cert: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new CA with a fresh key, common name `common_name`.
    pub fn generate(common_name: &str) -> BenchResult<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate as a rustls trust anchor input.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA private key, PKCS#8 PEM (e.g. for a Shoal tool that signs node certificates).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A root store trusting only this CA.
    pub fn root_store(&self) -> BenchResult<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der())?;
        Ok(roots)
    }

    /// Issues a leaf certificate usable as **both** TLS server and TLS client (Shoal nodes
    /// are both). Subject alternative names: `localhost`, `name` (if a valid DNS name and
    /// different) and `127.0.0.1`; common name `name`.
    pub fn issue_leaf(&self, name: &str) -> BenchResult<LeafCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        let dns_like = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if dns_like
            && name != SERVER_NAME
            && let Ok(dns) = name.try_into()
        {
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(LeafCert {
            name: name.to_owned(),
            cert,
            key,
        })
    }
}

/// A leaf certificate and its private key.
pub struct LeafCert {
    /// The name it was issued for (its common name).
    pub name: String,
    /// The certificate (rcgen type; `.der()` / `.pem()`).
    pub cert: rcgen::Certificate,
    /// Its private key (rcgen type; `.serialize_der()` / `.serialize_pem()`).
    pub key: KeyPair,
}

impl std::fmt::Debug for LeafCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCert")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LeafCert {
    /// The chain to present in TLS: just the leaf (peers trust the CA directly).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    /// The private key as a rustls key (PKCS#8 DER).
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// A CA and two leaves signed by it: what one two-sided scenario needs.
#[derive(Debug)]
pub struct TestPki {
    /// The CA both sides trust.
    pub ca: CertAuthority,
    /// The server side's certificate (also valid as a client certificate).
    pub server: LeafCert,
    /// The client side's certificate (also valid as a server certificate).
    pub client: LeafCert,
}

/// Generates a fresh CA and two leaf certificates (`"server"`, `"client"`) signed by it.
/// Use [`CertAuthority::issue_leaf`] on `ca` for more nodes.
pub fn generate_pki() -> BenchResult<TestPki> {
    let ca = CertAuthority::generate("shoal-bench CA")?;
    let server = ca.issue_leaf("server")?;
    let client = ca.issue_leaf("client")?;
    Ok(TestPki { ca, server, client })
}

/// rustls' *ring* provider, passed explicitly so nothing depends on a process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server configuration presenting `leaf`, **requiring** a client certificate
/// signed by `ca`, and offering the given ALPN protocols.
pub fn server_tls_config(
    ca: &CertAuthority,
    leaf: &LeafCert,
    alpn: &[&[u8]],
) -> BenchResult<rustls::ServerConfig> {
    server_tls_config_der(ca.cert_der(), leaf.chain(), leaf.key_der(), alpn)
}

/// [`server_tls_config`] from DER: the CA certificate clients must be signed by, the chain
/// and key to present (for a process that got them from another, as files).
pub fn server_tls_config_der(
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> BenchResult<rustls::ServerConfig> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS 1.3 client configuration trusting only `ca`, presenting `leaf` as its client
/// certificate, and offering the given ALPN protocols.
pub fn client_tls_config(
    ca: &CertAuthority,
    leaf: &LeafCert,
    alpn: &[&[u8]],
) -> BenchResult<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca.root_store()?)
        .with_client_auth_cert(leaf.chain(), leaf.key_der())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_builds_tls_configs() {
        let pki = generate_pki().expect("pki");
        assert!(pki.ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.server.key_pem().contains("PRIVATE KEY"));
        let server = server_tls_config(&pki.ca, &pki.server, &[b"bench"]).expect("server");
        assert_eq!(server.alpn_protocols, vec![b"bench".to_vec()]);
        client_tls_config(&pki.ca, &pki.client, &[b"bench"]).expect("client");
        let extra = pki.ca.issue_leaf("node-3").expect("more leaves");
        assert_eq!(extra.chain().len(), 1);
    }
}
