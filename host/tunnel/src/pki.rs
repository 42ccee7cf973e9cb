//! The cluster's certificate authority and the certificates it issues.
//!
//! One CA signs everything: the serving certificate (HTTPS API and QUIC tunnel), node
//! certificates (from CSRs sent during bootstrap, so node keys never leave the node) and
//! client certificates for kubeconfigs. Identities are Kubernetes-style: CN is the user, O
//! entries are groups.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SerialNumber,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::info;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::fsutil::{self, PUBLIC, SECRET};
use crate::{Error, Identity};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renew the serving certificate this long before it expires, so a server that restarts
/// rarely still never serves an expired certificate.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Back-date `not_before` so peers with a slightly slow clock accept fresh certificates.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The group every certificate-authenticated caller is in, as in Kubernetes.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The cluster CA plus the serving certificate, loaded from (or created in) a directory.
pub struct ClusterPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki")
            .field("ca_cert_hash", &self.ca_cert_hash())
            .finish_non_exhaustive()
    }
}

impl ClusterPki {
    /// Loads `dir/{ca,server}.{crt,key}`, creating what is missing. The CA is never replaced
    /// implicitly (that would orphan every joined node); the serving certificate is reissued
    /// when it expires within 30 days, was not signed by this CA, or its SANs differ from
    /// what is asked for now (a new address must work without manual steps).
    pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Self, Error> {
        Self::load_or_create_at(dir, extra_sans, OffsetDateTime::now_utc(), local_hostname())
    }

    fn load_or_create_at(
        dir: &Path,
        extra_sans: &[String],
        now: OffsetDateTime,
        hostname: Option<String>,
    ) -> Result<Self, Error> {
        fsutil::ensure_private_dir(dir)?;
        let (ca_pem, ca_der, ca_key) = load_or_create_ca(dir, now)?;
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, ca_key).map_err(|e| bad_file(dir, "ca.crt", e))?;
        let sans = serving_sans(hostname, extra_sans)?;
        let (server_der, server_key) = load_or_create_serving(dir, &sans, &ca_der, &issuer, now)?;
        Ok(Self {
            ca_pem,
            server_chain: vec![server_der, ca_der.clone()],
            ca_der,
            issuer,
            server_key,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// What join tokens pin: hex SHA-256 of the CA certificate's DER.
    pub fn ca_cert_hash(&self) -> String {
        hex::encode(Sha256::digest(self.ca_der.as_ref()))
    }

    #[cfg(test)]
    pub(crate) fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// A fresh key and client certificate (for kubeconfigs): the key is generated here
    /// because the caller has nowhere else to generate it.
    pub fn issue_client(
        &self,
        common_name: &str,
        orgs: &[&str],
        validity: Duration,
    ) -> Result<(String, String), Error> {
        let key = new_key()?;
        let params = client_params(common_name, orgs, OffsetDateTime::now_utc(), validity)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Signs a CSR's public key as a client certificate. Only the key is taken from the CSR
    /// (after checking its self-signature proves possession): subject, SANs and extensions are
    /// ours, because the requester is not trusted to name itself.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        common_name: &str,
        orgs: &[&str],
        validity: Duration,
    ) -> Result<String, Error> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::InvalidCsr)?;
        let params = client_params(common_name, orgs, OffsetDateTime::now_utc(), validity)?;
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }

    /// TLS for the HTTPS API: ALPN http/1.1; a client certificate is optional (tokens and
    /// anonymous discovery still work) but, when sent, must chain to the cluster CA.
    pub fn https_server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.client_verifier(provider)?)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// TLS for the QUIC tunnel: TLS 1.3 only (QUIC requires it), ALPN `kedge/1`, client
    /// certificate optional so that a certificate-less agent can still bootstrap.
    pub(crate) fn quic_server_config(&self) -> Result<rustls::ServerConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.client_verifier(provider)?)
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())?;
        cfg.alpn_protocols = vec![crate::ALPN.to_vec()];
        Ok(cfg)
    }

    fn client_verifier(
        &self,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        Ok(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()?,
        )
    }

    /// Writes a kubeconfig with everything embedded (no side files to lose), mode 0600
    /// because it holds a private key.
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server_url: &str,
        user: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), Error> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        // JSON string quoting is valid YAML double-quoted scalar syntax.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let yaml = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: kedge\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n\
             - name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n\
             contexts:\n\
             - name: kedge\n  context:\n    cluster: kedge\n    user: {user}\n\
             current-context: kedge\n\
             preferences: {{}}\n",
            server = q(server_url),
            ca = b64(&self.ca_pem),
            user = q(user),
            cert = b64(cert_pem),
            key = b64(key_pem),
        );
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(fsutil::io_err(parent))?;
        }
        fsutil::write_atomic(path, yaml.as_bytes(), SECRET)
    }
}

/// What rotation and revocation need to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Lowercase hex, for logs and for telling a rotated certificate from its predecessor.
    pub serial: String,
    /// When the CA signed it: `notBefore` plus the back-dating every certificate of this CA
    /// gets ([`CLOCK_SKEW`]). Revocation compares against this, so a certificate issued just
    /// after a revocation is not mistaken for one issued before it.
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// The span rotation is planned over (issue to expiry).
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.issued_at)
            .unwrap_or_default()
    }
}

/// Serial and validity of a certificate; `None` when it does not parse.
pub fn cert_info(der: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let at = |t: i64| {
        u64::try_from(t)
            .ok()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    };
    let v = cert.validity();
    Some(CertInfo {
        serial: hex::encode(cert.raw_serial()),
        issued_at: at(v.not_before.timestamp())? + CLOCK_SKEW,
        not_after: at(v.not_after.timestamp())?,
    })
}

/// [`cert_info`] of the first certificate in a PEM text.
pub fn cert_info_pem(pem: &str) -> Option<CertInfo> {
    cert_info(&CertificateDer::from_pem_slice(pem.as_bytes()).ok()?)
}

/// The identity a verified certificate speaks for: CN → user, O → groups, plus
/// `system:authenticated`. `None` when the certificate cannot be parsed or has no CN, so
/// callers treat it as unauthenticated rather than as an empty user name.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Option<Identity> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    if user.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    groups.push(AUTHENTICATED_GROUP.to_owned());
    Some(Identity { user, groups })
}

fn bad_file(dir: &Path, name: &str, reason: impl std::fmt::Display) -> Error {
    Error::BadFile {
        path: dir.join(name),
        reason: reason.to_string(),
    }
}

fn new_key() -> Result<KeyPair, Error> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// Random positive 128-bit serial: serials must be unique per CA, and deriving them from
/// anything predictable invites collisions after a restore.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Subjects carry at most two organizations (groups). rcgen keeps one value per attribute
/// type, so the second O is keyed as a custom type with the same OID (2.5.4.10): the DER is an
/// ordinary second O RDN. Beyond two, groups belong in an authorizer, not in certificates.
const MAX_ORGS: usize = 2;
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

fn subject(common_name: &str, orgs: &[&str]) -> Result<DistinguishedName, Error> {
    let mut unique: Vec<&str> = Vec::new();
    for org in orgs {
        if !unique.contains(org) {
            unique.push(org);
        }
    }
    if unique.len() > MAX_ORGS {
        return Err(Error::TooManyOrganizations(unique.len()));
    }
    let mut dn = DistinguishedName::new();
    for (i, org) in unique.into_iter().enumerate() {
        let ty = if i == 0 {
            DnType::OrganizationName
        } else {
            DnType::CustomDnType(ORGANIZATION_OID.to_vec())
        };
        dn.push(ty, org);
    }
    dn.push(DnType::CommonName, common_name);
    Ok(dn)
}

fn client_params(
    common_name: &str,
    orgs: &[&str],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(common_name, orgs)?;
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + validity;
    p.serial_number = Some(random_serial());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn load_or_create_ca(
    dir: &Path,
    now: OffsetDateTime,
) -> Result<(String, CertificateDer<'static>, KeyPair), Error> {
    let (crt_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (fsutil::read_opt(&crt_path)?, fsutil::read_opt(&key_path)?) {
        (Some(pem), Some(key_pem)) => {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| bad_file(dir, "ca.crt", e))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad_file(dir, "ca.key", e))?;
            let (_, cert) =
                X509Certificate::from_der(der.as_ref()).map_err(|e| bad_file(dir, "ca.crt", e))?;
            if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
                return Err(bad_file(dir, "ca.key", "does not belong to ca.crt"));
            }
            Ok((pem, der, key))
        }
        (None, None) => {
            let key = new_key()?;
            let mut p = CertificateParams::default();
            p.distinguished_name = subject("kedge-ca", &["kedge"])?;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.not_before = now - CLOCK_SKEW;
            p.not_after = now + CA_VALIDITY;
            p.serial_number = Some(random_serial());
            let cert = p.self_signed(&key)?;
            // Key first: a crash between the writes leaves a state we refuse loudly below
            // rather than a certificate whose key is gone.
            fsutil::write_atomic(&key_path, key.serialize_pem().as_bytes(), SECRET)?;
            fsutil::write_atomic(&crt_path, cert.pem().as_bytes(), PUBLIC)?;
            info!(dir = %dir.display(), "created cluster CA");
            Ok((cert.pem(), cert.der().clone(), key))
        }
        // Regenerating half a CA would silently invalidate every node: make the operator look.
        (Some(_), None) => Err(bad_file(dir, "ca.key", "missing while ca.crt exists")),
        (None, Some(_)) => Err(bad_file(dir, "ca.crt", "missing while ca.key exists")),
    }
}

/// The SANs the serving certificate must carry, normalised for comparison with what is on
/// disk (lowercase DNS names, canonical IP text).
fn serving_sans(hostname: Option<String>, extra: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    let fixed = ["localhost", crate::SERVER_NAME, "127.0.0.1", "::1"];
    let candidates = fixed
        .iter()
        .map(|s| s.to_string())
        .chain(hostname)
        .map(|s| (s, false))
        .chain(extra.iter().map(|s| (s.trim().to_owned(), true)));
    for (raw, user_given) in candidates {
        let norm = match raw.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) if valid_dns_name(&raw) => raw.to_ascii_lowercase(),
            Err(_) if user_given => return Err(Error::InvalidSan(raw)),
            // A hostname we cannot put in a certificate is simply left out.
            Err(_) => continue,
        };
        if !out.contains(&norm) {
            out.push(norm);
        }
    }
    Ok(out)
}

fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn local_hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn san_set(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(d.to_ascii_lowercase());
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Why an on-disk serving certificate cannot be reused, or `None` if it can.
fn serving_stale_reason(
    cert_der: &CertificateDer<'_>,
    key: &KeyPair,
    sans: &[String],
    ca_der: &CertificateDer<'_>,
    now: OffsetDateTime,
) -> Option<&'static str> {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der.as_ref()) else {
        return Some("unparsable");
    };
    let Ok((_, ca)) = X509Certificate::from_der(ca_der.as_ref()) else {
        return Some("unparsable CA");
    };
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Some("not signed by the current CA");
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Some("key does not match");
    }
    let renew_at = (now + RENEW_BEFORE).unix_timestamp();
    if cert.validity().not_after.timestamp() <= renew_at {
        return Some("expiring");
    }
    if san_set(&cert) != sans.iter().cloned().collect::<BTreeSet<_>>() {
        return Some("SANs changed");
    }
    None
}

fn load_or_create_serving(
    dir: &Path,
    sans: &[String],
    ca_der: &CertificateDer<'static>,
    issuer: &Issuer<'static, KeyPair>,
    now: OffsetDateTime,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), Error> {
    let (crt_path, key_path): (PathBuf, PathBuf) = (dir.join("server.crt"), dir.join("server.key"));
    let existing = match (fsutil::read_opt(&crt_path)?, fsutil::read_opt(&key_path)?) {
        (Some(pem), Some(key_pem)) => {
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok();
            let key = KeyPair::from_pem(&key_pem).ok();
            der.zip(key).map(|(d, k)| (d, k, key_pem))
        }
        _ => None,
    };
    let reason = match &existing {
        Some((der, key, key_pem)) => match serving_stale_reason(der, key, sans, ca_der, now) {
            None => {
                let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                    .map_err(|e| bad_file(dir, "server.key", e))?;
                return Ok((der.clone(), key_der));
            }
            Some(reason) => reason,
        },
        None => "missing",
    };
    let key = new_key()?;
    let mut p = CertificateParams::new(sans.to_vec())?;
    p.distinguished_name = subject(crate::SERVER_NAME, &[])?;
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + SERVING_VALIDITY;
    p.serial_number = Some(random_serial());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, issuer)?;
    fsutil::write_atomic(&key_path, key.serialize_pem().as_bytes(), SECRET)?;
    fsutil::write_atomic(&crt_path, cert.pem().as_bytes(), PUBLIC)?;
    info!(dir = %dir.display(), reason, sans = ?sans, "issued serving certificate");
    let key_der = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .map_err(|e| bad_file(dir, "server.key", e))?;
    Ok((cert.der().clone(), key_der))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn parse(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn mode(p: PathBuf) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_then_reuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let host = Some("edge-box".to_owned());
        let a = ClusterPki::load_or_create_at(dir.path(), &[], now, host.clone()).unwrap();
        for f in ["ca.crt", "ca.key", "server.crt", "server.key"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert_eq!(mode(dir.path().join("ca.key")), 0o600);
        assert_eq!(mode(dir.path().join("server.key")), 0o600);
        let server_pem = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();

        let b = ClusterPki::load_or_create_at(dir.path(), &[], now, host).unwrap();
        assert_eq!(a.ca_cert_hash(), b.ca_cert_hash());
        assert_eq!(a.ca_pem(), b.ca_pem());
        assert_eq!(
            server_pem,
            std::fs::read_to_string(dir.path().join("server.crt")).unwrap(),
            "a valid serving certificate must be reused"
        );
        assert_eq!(a.ca_cert_hash().len(), 64);

        let (_, cert) = X509Certificate::from_der(a.server_chain[0].as_ref()).unwrap();
        let sans = san_set(&cert);
        for want in ["localhost", "kedge-server", "127.0.0.1", "::1", "edge-box"] {
            assert!(sans.contains(want), "{want} in {sans:?}");
        }
    }

    #[test]
    fn serving_cert_renewed_on_san_change_and_expiry_but_ca_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let read = || std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
        let a = ClusterPki::load_or_create_at(dir.path(), &[], now, None).unwrap();
        let first = read();

        let extra = vec!["10.0.0.7".to_owned(), "API.Example.com".to_owned()];
        let b = ClusterPki::load_or_create_at(dir.path(), &extra, now, None).unwrap();
        let second = read();
        assert_ne!(first, second, "SAN change must reissue");
        assert_eq!(a.ca_cert_hash(), b.ca_cert_hash());
        let (_, cert) = X509Certificate::from_der(b.server_chain[0].as_ref()).unwrap();
        assert!(san_set(&cert).contains("api.example.com"));
        assert!(san_set(&cert).contains("10.0.0.7"));

        // Same SANs, but 340 days later the 1-year certificate is within 30 days of expiry.
        ClusterPki::load_or_create_at(dir.path(), &extra, now + 340 * DAY, None).unwrap();
        assert_ne!(second, read(), "expiring certificate must be renewed");
    }

    #[test]
    fn invalid_extra_san_and_half_ca_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClusterPki::load_or_create(dir.path(), &["not a name!".to_owned()]).unwrap_err();
        assert!(matches!(err, Error::InvalidSan(_)), "{err}");

        ClusterPki::load_or_create(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = ClusterPki::load_or_create(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }

    #[test]
    fn csr_subject_is_forced() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), &[]).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut req = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        req.distinguished_name = subject("system:admin", &["system:masters"]).unwrap();
        let csr = req.serialize_request(&key).unwrap().pem().unwrap();

        let pem = pki
            .sign_csr(&csr, "system:node:n1", &["system:nodes"], DAY)
            .unwrap();
        let der = parse(&pem);
        let id = identity_from_cert(&der).unwrap();
        assert_eq!(id.user, "system:node:n1");
        assert_eq!(id.groups, ["system:nodes", AUTHENTICATED_GROUP]);
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        assert!(san_set(&cert).is_empty(), "requested SANs must be dropped");
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.der_bytes(),
            "the CSR's key is the one certified"
        );
        let (_, ca) = X509Certificate::from_der(pki.ca_der().as_ref()).unwrap();
        cert.verify_signature(Some(ca.public_key())).unwrap();

        assert!(matches!(
            pki.sign_csr("garbage", "x", &[], DAY),
            Err(Error::InvalidCsr(_))
        ));
    }

    #[test]
    fn client_certs_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), &[]).unwrap();
        let (cert, key) = pki
            .issue_client("admin", &["system:masters", "ops"], DAY)
            .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let id = identity_from_cert(&parse(&cert)).unwrap();
        assert_eq!(
            id,
            Identity {
                user: "admin".into(),
                groups: vec![
                    "system:masters".into(),
                    "ops".into(),
                    AUTHENTICATED_GROUP.into()
                ],
            }
        );
        assert!(identity_from_cert(&CertificateDer::from(vec![1, 2, 3])).is_none());
        assert!(matches!(
            pki.issue_client("u", &["a", "b", "c"], DAY),
            Err(Error::TooManyOrganizations(3))
        ));

        let kc = dir.path().join("sub/admin.kubeconfig");
        pki.write_kubeconfig(&kc, "https://127.0.0.1:6443", "admin", &cert, &key)
            .unwrap();
        assert_eq!(mode(kc.clone()), 0o600);
        let text = std::fs::read_to_string(&kc).unwrap();
        assert!(text.contains("current-context: kedge"));
        assert!(text.contains("server: \"https://127.0.0.1:6443\""));
        assert!(text.contains("client-key-data: "));

        crate::install_crypto_provider();
        let cfg = pki.https_server_config().unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
