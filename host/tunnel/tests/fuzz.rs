//! Fuzz targets for what the tunnel reads from joining and connected agents (see
//! fuzz/driver.rs): certificate signing requests (bootstrap and renewal) and the client
//! certificates it takes identities from.

#[path = "../../../fuzz/driver.rs"]
mod driver;

use driver::{run, target, text};
use kedge_tunnel::pki::{ClusterPki, cert_info_pem, identity_from_cert};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use std::time::Duration;

const PEM_DICT: &[&str] = &[
    "-----BEGIN CERTIFICATE REQUEST-----\n",
    "-----END CERTIFICATE REQUEST-----\n",
    "-----BEGIN CERTIFICATE-----\n",
    "-----END CERTIFICATE-----\n",
    "MII",
    "MIIB",
    "A",
    "/",
    "+",
    "=",
    "\n",
];

#[test]
fn fuzz_csr() {
    let dir = tempfile::tempdir().unwrap();
    let pki = ClusterPki::load_or_create(dir.path(), &[]).unwrap();
    let t = target("csr", 16 << 10, PEM_DICT);
    run(t, |b| {
        let Ok(cert) = pki.sign_csr(
            &text(b),
            "system:node:n1",
            &["system:nodes"],
            Duration::from_secs(3600),
        ) else {
            return false;
        };
        // Whatever the request said, the certificate names the identity we chose.
        assert!(cert_info_pem(&cert).is_some());
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("our own PEM");
        let id = identity_from_cert(&der).expect("our own certificate has an identity");
        assert_eq!(id.user, "system:node:n1");
        assert!(id.groups.iter().any(|g| g == "system:nodes"));
        true
    });
}

#[test]
fn fuzz_client_certificate() {
    let t = target("client_certificate", 16 << 10, PEM_DICT);
    run(t, |b| {
        // As PEM (kubeconfigs, stored certificates) and as the DER a TLS peer presents.
        let pem = cert_info_pem(&text(b)).is_some();
        let der = CertificateDer::from(b.to_vec());
        identity_from_cert(&der).is_some() | pem
    });
}
