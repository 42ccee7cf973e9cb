//! Which nodes' certificates are revoked.
//!
//! A revocation is "every certificate of node N issued at or before time T". That needs no
//! serial bookkeeping (a node may have rotated many times), survives rotation (the rotated
//! certificate was issued before T too) and lets the node back in with a certificate issued
//! after T, i.e. after a fresh bootstrap. The list lives in the API (the main crate feeds it
//! from a watched ConfigMap); this type is the cheap in-memory copy every handshake reads.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::pki::{cert_info, identity_from_cert};

/// Why a node's certificate is no longer accepted; the text goes to logs and to the agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {node}'s certificates issued until {} are revoked: join again with a new bootstrap token (kedge token create)",
    rfc3339(*.at)
)]
pub struct Revoked {
    pub node: String,
    pub at: SystemTime,
}

/// Node name → revocation time, shared by the tunnel server and the HTTPS API.
pub struct Revocations {
    map: RwLock<HashMap<String, SystemTime>>,
    changed: watch::Sender<u64>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("nodes", &self.read().len())
            .finish()
    }
}

/// Whole seconds since the epoch: certificate times have no finer resolution, so comparing
/// at this resolution keeps "issued at or before" exact.
fn secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    }
}

impl Revocations {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, SystemTime>> {
        // Writers replace the map in one assignment; a poisoned lock still holds a whole map.
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a new list. Live connections are re-checked by whoever [`Self::subscribe`]d
    /// (the tunnel server closes those now revoked).
    pub fn replace(&self, map: HashMap<String, SystemTime>) {
        let mut w = self.map.write().unwrap_or_else(|p| p.into_inner());
        if *w == map {
            return;
        }
        *w = map;
        drop(w);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn revoked_at(&self, node: &str) -> Option<SystemTime> {
        self.read().get(node).copied()
    }

    /// `Err` if node's certificate issued at `issued_at` is revoked.
    pub fn check(&self, node: &str, issued_at: SystemTime) -> Result<(), Revoked> {
        match self.revoked_at(node) {
            Some(at) if secs(issued_at) <= secs(at) => Err(Revoked {
                node: node.to_owned(),
                at,
            }),
            _ => Ok(()),
        }
    }

    /// Fires after every change of the list.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits, if needed, until a certificate signed now would be issued strictly after the
    /// node's revocation (at most about a second: the revocation time comes from the server's
    /// own clock). `Err` when the revocation lies further in the future than clock skew
    /// explains, since nothing issued now could be accepted.
    pub(crate) async fn wait_until_after(&self, node: &str) -> Result<(), Revoked> {
        let Some(at) = self.revoked_at(node) else {
            return Ok(());
        };
        let next = UNIX_EPOCH + Duration::from_secs((secs(at) + 1).max(0) as u64);
        match next.duration_since(SystemTime::now()) {
            Err(_) => Ok(()),
            Ok(wait) if wait <= Duration::from_secs(2) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Ok(_) => Err(Revoked {
                node: node.to_owned(),
                at,
            }),
        }
    }
}

/// The node a certificate speaks for (`system:node:<name>` in `system:nodes`) and when it was
/// issued: what [`Revocations::check`] needs. `None` for any other certificate, which is none
/// of this list's business. The HTTPS API computes it once per connection.
pub fn node_cert(der: &CertificateDer<'_>) -> Option<(String, SystemTime)> {
    let node = crate::server::node_name(&identity_from_cert(der)?)?;
    Some((node, cert_info(der)?.issued_at))
}

/// `YYYY-MM-DDTHH:MM:SSZ`, as Kubernetes prints times.
pub fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp(secs(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterPki;

    const T: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn revoked_means_issued_at_or_before() {
        let r = Revocations::default();
        let at = UNIX_EPOCH + T;
        let mut rx = r.subscribe();
        r.replace(HashMap::from([("n1".to_owned(), at)]));
        assert!(rx.has_changed().unwrap(), "a change is announced");
        rx.borrow_and_update();
        r.replace(HashMap::from([("n1".to_owned(), at)]));
        assert!(!rx.has_changed().unwrap(), "the same list is no change");

        let before = at - Duration::from_secs(3600);
        let err = r.check("n1", before).unwrap_err();
        assert_eq!(err.at, at);
        assert!(err.to_string().contains("2027-01-15T08:00:00Z"), "{err}");
        assert!(err.to_string().contains("new bootstrap token"), "{err}");
        // Same second (certificates carry whole seconds) counts as before.
        assert!(r.check("n1", at + Duration::from_millis(900)).is_err());
        assert!(r.check("n1", at + Duration::from_secs(1)).is_ok());
        assert!(r.check("n2", before).is_ok(), "other nodes unaffected");

        r.replace(HashMap::new());
        assert!(
            r.check("n1", before).is_ok(),
            "an un-revoked node is accepted"
        );
    }

    #[test]
    fn only_node_certificates_are_subject_to_the_list() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ClusterPki::load_or_create(dir.path(), &[]).unwrap();
        let day = Duration::from_secs(86400);
        let der = |pem: &str| {
            use rustls_pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let (node, _) = pki
            .issue_client("system:node:n1", &["system:nodes"], day)
            .unwrap();
        let (admin, _) = pki
            .issue_client("system:node:n1", &["system:masters"], day)
            .unwrap();
        let (name, issued) = node_cert(&der(&node)).unwrap();
        assert_eq!(name, "n1");
        let r = Revocations::default();
        assert!(r.check(&name, issued).is_ok());
        r.replace(HashMap::from([(
            "n1".to_owned(),
            SystemTime::now() + Duration::from_secs(1),
        )]));
        assert!(r.check(&name, issued).is_err());
        assert_eq!(
            node_cert(&der(&admin)),
            None,
            "not a node certificate (no system:nodes)"
        );
    }

    #[tokio::test]
    async fn issuing_waits_past_the_revocation_second() {
        let r = Revocations::default();
        let now = SystemTime::now();
        r.replace(HashMap::from([("n1".to_owned(), now)]));
        r.wait_until_after("n1").await.unwrap();
        assert!(r.check("n1", SystemTime::now()).is_ok());
        r.replace(HashMap::from([(
            "n1".to_owned(),
            now + Duration::from_secs(3600),
        )]));
        assert!(r.wait_until_after("n1").await.is_err(), "future revocation");
        assert!(r.wait_until_after("other").await.is_ok());
    }
}
