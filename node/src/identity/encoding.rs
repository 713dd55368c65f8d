//! PEM text in and out: certificates are read with rustls-pki-types and written with the `pem`
//! crate (LF line endings, 64 characters a line, as OpenSSL writes them).

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::Error;

/// All certificates in `pem_text`; at least one. `what` names them in errors.
pub(crate) fn parse_cert_pem(
    pem_text: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
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

/// PEM-encodes `der` under `label` (`CERTIFICATE`, `PRIVATE KEY`, `X509 CRL`, ...).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}
