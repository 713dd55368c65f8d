//! Certificates and PEM files: issuing, saving and loading, validation, readable errors.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::tls;

/// QUIC transport settings for checking that an identity is accepted by the TLS configuration.
fn transport() -> Arc<quinn::TransportConfig> {
    Arc::new(tls::transport(Duration::from_millis(500), Duration::from_secs(2), false).unwrap())
}

/// A fresh, unique folder under the system temp folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "shoal-identity-test-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pem_files_round_trip() {
    let dir = TempDir::new();
    let ca = MeshCa::generate("round trip").unwrap();
    let ca_dir = dir.0.join("ca");
    ca.save(&ca_dir).unwrap();

    let loaded = MeshCa::load(&ca_dir).unwrap();
    assert!(loaded.can_issue());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.key_pem(), ca.key_pem());
    let trust_only = MeshCa::load_cert(ca_dir.join(MeshCa::CERT_FILE)).unwrap();
    assert!(!trust_only.can_issue());
    assert!(trust_only.key_pem().is_none());

    // Saving over an existing CA is refused and names the file.
    let err = ca.save(&ca_dir).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path.starts_with(&ca_dir)),
        "{err}"
    );

    let identity = loaded.issue("orders").unwrap();
    let cert_path = dir.0.join("orders").join("node.pem");
    let key_path = dir.0.join("orders").join("node.key");
    identity.save(&cert_path, &key_path).unwrap();
    identity.save(&cert_path, &key_path).unwrap(); // overwriting is fine
    let back = Identity::load(&cert_path, &key_path).unwrap();
    assert_eq!(back.service(), Some("orders"));
    assert_eq!(back.cert_pem(), identity.cert_pem());
    assert_eq!(back.key_pem(), identity.key_pem());
    // The reloaded identity still works with the (trust-only) CA.
    let live =
        tls::LiveTls::new(back.clone(), vec![trust_only.clone()], Revocations::new()).unwrap();
    tls::server_config(&live, transport()).unwrap();
    tls::client_config(&live, transport()).unwrap();

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in [ca_dir.join(MeshCa::KEY_FILE), key_path] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }

    // A CA folder without ca.key loads as trust-only.
    std::fs::remove_file(ca_dir.join(MeshCa::KEY_FILE)).unwrap();
    let trust_only = MeshCa::load(&ca_dir).unwrap();
    let err = trust_only.issue("orders").unwrap_err();
    assert!(err.to_string().contains("without its private key"), "{err}");

    // Missing files are reported with their path.
    let missing = dir.0.join("nowhere");
    match MeshCa::load(&missing).unwrap_err() {
        Error::Io { path, .. } => assert_eq!(path, missing.join(MeshCa::CERT_FILE)),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn garbage_pem_gives_a_readable_identity_error() {
    let ca = MeshCa::generate("garbage").unwrap();
    let good = ca.issue("orders").unwrap();
    let good_cert = good.cert_pem();
    let cases = [
        ("not a pem at all", good.key_pem()),
        ("", good.key_pem()),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            good.key_pem(),
        ),
        (good_cert.as_str(), "garbage".to_owned()),
        (good_cert.as_str(), ca.issue("orders").unwrap().key_pem()),
    ];
    for (cert, key) in cases {
        match Identity::from_pem(cert, &key) {
            Err(Error::Identity(msg)) => {
                assert!(!msg.is_empty());
                eprintln!("{msg}");
            }
            other => panic!("expected an identity error, got {other:?}"),
        }
    }
    assert!(matches!(
        MeshCa::from_pem("garbage"),
        Err(Error::Identity(_))
    ));
    // A node certificate is not a CA.
    let err = MeshCa::from_pem(&good.cert_pem()).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    // A CA key that belongs to another CA is refused.
    let other = MeshCa::generate("other").unwrap();
    let err = MeshCa::from_pem_with_key(&ca.cert_pem(), &other.key_pem().unwrap()).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn service_names_are_validated() {
    let ca = MeshCa::generate("names").unwrap();
    for good in ["a", "orders", "order-service-2", &"x".repeat(63)] {
        assert_eq!(ca.issue(good).unwrap().service(), Some(good));
    }
    for bad in [
        "",
        "Orders",
        "or.ders",
        "or_ders",
        "-orders",
        "orders-",
        &"x".repeat(64),
    ] {
        match ca.issue(bad) {
            Err(Error::Identity(msg)) => assert!(msg.contains("service name"), "{msg}"),
            other => panic!("`{bad}` should be refused, got {other:?}"),
        }
    }
}

#[test]
fn debug_never_prints_private_keys() {
    let ca = MeshCa::generate("debug").unwrap();
    let identity = ca.issue("orders").unwrap();
    let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    let ca_debug = format!("{ca:?}");
    let id_debug = format!("{identity:?}");
    assert!(
        !ca_debug.contains(&key_body(&ca.key_pem().unwrap())),
        "{ca_debug}"
    );
    assert!(
        !id_debug.contains(&key_body(&identity.key_pem())),
        "{id_debug}"
    );
    assert!(ca_debug.contains("debug"), "{ca_debug}");
    assert!(id_debug.contains("orders"), "{id_debug}");
}

#[test]
fn issued_certificates_have_the_mesh_names() {
    let ca = MeshCa::generate("names").unwrap();
    let identity = ca.issue("orders").unwrap();
    let leaf = &identity.cert_chain()[0];
    let fields = dns_names_for_tests(leaf);
    assert_eq!(fields, vec!["shoal.mesh", "orders.svc.shoal.mesh"]);
}

#[test]
fn issued_certificates_have_random_serials_and_the_asked_lifetime() {
    let ca = MeshCa::generate("serials").unwrap();
    let a = ca.issue("orders").unwrap();
    let b = ca.issue("orders").unwrap();
    assert_ne!(a.certificate().serial, b.certificate().serial);
    assert_eq!(a.certificate().serial.as_bytes().len(), 16);
    assert_eq!(a.certificate().service.as_deref(), Some("orders"));

    let now = SystemTime::now();
    let short = ca
        .issue_valid_for("orders", Duration::from_secs(600))
        .unwrap();
    let info = short.certificate();
    let remaining = info.remaining_at(now).unwrap();
    assert!(remaining <= Duration::from_secs(601), "{remaining:?}");
    assert!(remaining >= Duration::from_secs(590), "{remaining:?}");
    assert!(
        info.not_before <= now - Duration::from_secs(3000),
        "backdated for skew"
    );
    assert!(info.remaining_at(now + Duration::from_secs(700)).is_none());
    assert!(ca.issue_valid_for("orders", Duration::ZERO).is_err());
    let err = ca.issue_valid_between("orders", now, now).unwrap_err();
    assert!(
        err.to_string().contains("must end after it starts"),
        "{err}"
    );
    let later = ca
        .issue_valid_between(
            "orders",
            now + Duration::from_secs(86_400),
            now + Duration::from_secs(2 * 86_400),
        )
        .unwrap();
    assert_eq!(
        later
            .certificate()
            .not_before
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        (now + Duration::from_secs(86_400))
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );

    // The facts survive PEM, and can be read from a certificate file alone.
    let from_pem = CertificateInfo::from_pem(&short.cert_pem()).unwrap();
    assert_eq!(&from_pem, info);
    let back = Identity::from_pem(&short.cert_pem(), &short.key_pem()).unwrap();
    assert_eq!(back.certificate(), info);
}

/// A lifetime past the year 9999 (`shoal cert issue --days 3000000`) is refused with an
/// identity error instead of panicking while the date is computed; the last second of 9999 is
/// still a valid end.
#[test]
fn a_lifetime_past_the_year_9999_is_refused_not_a_panic() {
    let ca = MeshCa::generate("far future").unwrap();
    let days = Duration::from_secs(u64::from(u32::MAX) * 86_400);
    let err = ca.issue_valid_for("svc", days).unwrap_err();
    assert!(matches!(err, Error::Identity(_)), "{err:?}");
    assert!(err.to_string().contains("year 9999"), "{err}");
    let err = ca.issue_valid_for("svc", Duration::MAX).unwrap_err();
    assert!(err.to_string().contains("year 9999"), "{err}");

    let now = SystemTime::now();
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    let until_9999 = ca.issue_valid_between("svc", now, last).unwrap();
    assert_eq!(until_9999.certificate().not_after, last);
    let one_more = ca.issue_valid_between("svc", now, last + Duration::from_secs(1));
    assert!(matches!(one_more, Err(Error::Identity(_))), "{one_more:?}");
}

#[test]
fn pem_is_written_as_openssl_writes_it() {
    let ca = MeshCa::generate("pem layout").unwrap();
    let pem = ca.issue("orders").unwrap().cert_pem();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    assert!(pem.ends_with("-----END CERTIFICATE-----\n"), "{pem}");
    assert!(!pem.contains('\r'));
    let body: Vec<&str> = pem.lines().skip(1).collect();
    let (last, full) = body[..body.len() - 1].split_last().unwrap();
    assert!(full.iter().all(|line| line.len() == 64), "{pem}");
    assert!(!last.is_empty() && last.len() <= 64);
}

#[test]
fn revocation_lists_are_signed_numbered_and_checked() {
    let dir = TempDir::new();
    let ca = MeshCa::generate("revoking").unwrap();
    let trust = MeshCa::from_pem(&ca.cert_pem()).unwrap();
    let leaked = ca.issue("billing").unwrap();
    let other = ca.issue("shop").unwrap();

    let first = ca
        .revoke(None, [leaked.certificate().serial.clone()])
        .unwrap();
    assert_eq!(first.number(), 1);
    assert_eq!(
        first.serials().collect::<Vec<_>>(),
        vec![&leaked.certificate().serial]
    );
    let path = dir.0.join(RevocationList::FILE);
    first.save(&path).unwrap();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("-----BEGIN X509 CRL-----\n")
    );

    // A node that trusts the CA (without its key) reads it back.
    let loaded = RevocationList::load(&path, std::slice::from_ref(&trust)).unwrap();
    assert_eq!(loaded.number(), 1);
    assert_eq!(loaded.len(), 1);

    // Extending keeps what was revoked, adds the new serial once, and numbers the list on.
    let second = ca
        .revoke(
            Some(&loaded),
            [
                other.certificate().serial.clone(),
                leaked.certificate().serial.clone(),
            ],
        )
        .unwrap();
    assert_eq!(second.number(), 2);
    assert_eq!(second.len(), 2);
    second.save(&path).unwrap();
    let revocations = Revocations::new();
    assert!(revocations.replace_with_lists([&RevocationList::load(&path, &[trust]).unwrap()]));
    assert!(revocations.is_revoked(&other.certificate().serial));

    // A list signed by another CA is refused, even when it claims the same name.
    let impostor = MeshCa::generate("revoking").unwrap();
    let forged = impostor.revoke(None, []).unwrap();
    let err = RevocationList::from_pem(&forged.to_pem(), std::slice::from_ref(&ca)).unwrap_err();
    assert!(
        err.to_string().contains("not signed by a trusted mesh CA"),
        "{err}"
    );
    let err = ca.revoke(Some(&forged), []).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");

    // A tampered list is refused.
    let mut der = second.to_pem();
    der = der.replacen('A', "B", 1);
    assert!(RevocationList::from_pem(&der, std::slice::from_ref(&ca)).is_err());
    assert!(RevocationList::from_pem("garbage", std::slice::from_ref(&ca)).is_err());

    // Only a CA with its key can sign.
    let trust_only = MeshCa::from_pem(&ca.cert_pem()).unwrap();
    let err = trust_only.revoke(None, []).unwrap_err();
    assert!(err.to_string().contains("private key"), "{err}");
}
