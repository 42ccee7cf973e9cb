//! Service-account tokens: JWTs (ES256) signed by a key the server keeps in its PKI
//! directory (`pki/sa.key`, as kubeadm names it), the claims Kubernetes puts in them, and
//! their verification for `Authorization: Bearer` requests.
//!
//! Two kinds, as in Kubernetes:
//! - TokenRequest tokens (`kubectl create token`, `POST …/serviceaccounts/<name>/token`):
//!   issuer [`ISSUER`], an audience, `exp`, and the ServiceAccount's uid — valid until they
//!   expire or the ServiceAccount (that uid) is deleted;
//! - legacy Secret tokens (type `kubernetes.io/service-account-token`, filled by
//!   [`run_legacy`]): issuer `kubernetes/serviceaccount`, no expiry — valid while the Secret
//!   holds them and the ServiceAccount exists.
//!
//! Signing uses ring directly (already the TLS provider), which keeps the JWS to a few lines.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::error::{ApiError, Cause};
use crate::ops::{Api, WriteOptions};
use kedge_core::meta;
use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector as LabelSelector;
use kedge_store::EventType;
use kedge_store::informer::Informers;

/// The issuer (and default audience) of TokenRequest tokens: kube-apiserver's default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The issuer of legacy Secret tokens.
pub(crate) const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";
pub(crate) const SECRET_TYPE: &str = "kubernetes.io/service-account-token";
pub(crate) const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub(crate) const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// kube-apiserver's default when the request names no duration.
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// kube-apiserver refuses shorter tokens (`may not specify a duration less than 10 minutes`).
const MIN_EXPIRATION_SECONDS: i64 = 600;
/// And longer ones than 2^32 s.
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Tolerated clock difference for `nbf`/`iat` of tokens used right after being issued.
const CLOCK_SKEW_SECONDS: i64 = 60;
/// A full pass over legacy token Secrets catches anything an event was missed for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("service account signing key {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("service account signing key {0}: not a PKCS#8 P-256 key")]
    BadKey(String),
    #[error("generating the service account signing key")]
    Generate,
}

/// Why a bearer token is not accepted (all answered with 401; the reason is only logged).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported signing algorithm")]
    Algorithm,
    #[error("invalid signature")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audiences do not include the API server")]
    Audience,
    #[error("unknown issuer")]
    Issuer,
    #[error("{0}")]
    Revoked(String),
}

/// The signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64url(s: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed)
}

const ALG: &signature::EcdsaSigningAlgorithm = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;

impl Signer {
    /// Loads `path` (PEM PKCS#8), creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| Error::BadKey(path.display().to_string()))?;
                Self::from_pkcs8(&der).ok_or_else(|| Error::BadKey(path.display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = Self::generate_pkcs8()?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
                let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
                for chunk in b64.as_bytes().chunks(64) {
                    pem.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
                    pem.push('\n');
                }
                pem.push_str("-----END PRIVATE KEY-----\n");
                // Atomically: a crash must not leave a truncated key that fails every start.
                kedge_tunnel::write_atomic(path, pem.as_bytes(), 0o600)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                tracing::info!(path = %path.display(), "created the service account signing key");
                Self::from_pkcs8(&der).ok_or_else(|| Error::BadKey(path.display().to_string()))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn generate_pkcs8() -> Result<Vec<u8>, Error> {
        let doc =
            EcdsaKeyPair::generate_pkcs8(ALG, &SystemRandom::new()).map_err(|_| Error::Generate)?;
        Ok(doc.as_ref().to_vec())
    }

    /// A fresh in-memory key (tests).
    pub fn generate() -> Result<Self, Error> {
        let der = Self::generate_pkcs8()?;
        Self::from_pkcs8(&der).ok_or_else(|| Error::BadKey("generated".into()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Option<Self> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(ALG, der, &rng).ok()?;
        // kube's key id: the SHA-256 of the public key, base64url.
        let kid = {
            use sha2::Digest as _;
            b64url(&sha2::Sha256::digest(key.public_key().as_ref()))
        };
        Some(Signer { key, kid, rng })
    }

    /// A compact JWS of `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("ECDSA signing with a valid key does not fail");
        format!("{input}.{}", b64url(sig.as_ref()))
    }

    /// The claims of a token this key signed, checked for time and audience (`now` in Unix
    /// seconds). Whether its ServiceAccount still exists is [`authenticate`]'s business.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value =
            serde_json::from_slice(&unb64url(h)?).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::Algorithm);
        }
        let sig = unb64url(s)?;
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| TokenError::Signature)?;
        let claims: Value =
            serde_json::from_slice(&unb64url(c)?).map_err(|_| TokenError::Malformed)?;
        match claims.get("iss").and_then(Value::as_str) {
            Some(LEGACY_ISSUER) => return Ok(claims),
            Some(ISSUER) => {}
            _ => return Err(TokenError::Issuer),
        }
        let num = |k: &str| claims.get(k).and_then(Value::as_i64);
        match num("exp") {
            Some(exp) if exp > now => {}
            _ => return Err(TokenError::Expired),
        }
        if num("nbf").is_some_and(|nbf| nbf > now + CLOCK_SKEW_SECONDS) {
            return Err(TokenError::NotYetValid);
        }
        let audiences = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !audiences.contains(&ISSUER) {
            return Err(TokenError::Audience);
        }
        Ok(claims)
    }
}

/// The claims of a TokenRequest token, as kube-apiserver writes them.
pub fn claims(sa: &Value, audiences: &[String], now: i64, seconds: i64) -> Value {
    let (ns, name) = (meta::namespace(sa), meta::name(sa));
    json!({
        "aud": audiences,
        "exp": now + seconds,
        "iat": now,
        "iss": ISSUER,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": meta::uid(sa)},
        },
        "nbf": now,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    })
}

fn service_accounts() -> &'static Resource {
    resources::by_kind("v1", "ServiceAccount").expect("serviceaccounts are served")
}

fn pods() -> &'static Resource {
    resources::by_kind("v1", "Pod").expect("pods are served")
}

fn secrets() -> &'static Resource {
    resources::by_kind("v1", "Secret").expect("secrets are served")
}

/// The identity of a ServiceAccount, with Kubernetes' groups.
pub fn identity(ns: &str, name: &str) -> Identity {
    Identity {
        user: format!("system:serviceaccount:{ns}:{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    }
}

/// Authenticates a bearer token: signature and time, then the ServiceAccount (same uid) and,
/// for legacy tokens, the Secret holding it must still exist.
pub fn authenticate(
    api: &Api,
    signer: &Signer,
    token: &str,
    now: i64,
) -> Result<Identity, TokenError> {
    let claims = signer.verify(token, now)?;
    let s = |p: &str| {
        claims
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let legacy = s("/iss") == LEGACY_ISSUER;
    let (ns, name, uid) = if legacy {
        (
            s("/kubernetes.io~1serviceaccount~1namespace"),
            s("/kubernetes.io~1serviceaccount~1service-account.name"),
            s("/kubernetes.io~1serviceaccount~1service-account.uid"),
        )
    } else {
        (
            s("/kubernetes.io/namespace"),
            s("/kubernetes.io/serviceaccount/name"),
            s("/kubernetes.io/serviceaccount/uid"),
        )
    };
    if s("/sub") != format!("system:serviceaccount:{ns}:{name}") || name.is_empty() {
        return Err(TokenError::Malformed);
    }
    match api.get(service_accounts(), &ns, &name) {
        Ok(sa) if meta::uid(&sa) == uid && sa.pointer("/metadata/deletionTimestamp").is_none() => {}
        Ok(_) => {
            return Err(TokenError::Revoked(format!(
                "service account {ns}/{name} has been deleted and recreated"
            )));
        }
        Err(_) => {
            return Err(TokenError::Revoked(format!(
                "service account {ns}/{name} no longer exists"
            )));
        }
    }
    // A pod-bound token dies with its pod.
    if let Some(pod) = claims.pointer("/kubernetes.io/pod") {
        let (pod_name, pod_uid) = (
            pod["name"].as_str().unwrap_or_default(),
            pod["uid"].as_str().unwrap_or_default(),
        );
        match api.get(pods(), &ns, pod_name) {
            Ok(p) if meta::uid(&p) == pod_uid => {}
            _ => {
                return Err(TokenError::Revoked(format!(
                    "pod {ns}/{pod_name} (uid {pod_uid}), which the token is bound to, no \
                     longer exists"
                )));
            }
        }
    }
    if legacy {
        let secret = s("/kubernetes.io~1serviceaccount~1secret.name");
        let held = api.get(secrets(), &ns, &secret).ok().and_then(|sec| {
            let b = sec.pointer("/data/token")?.as_str()?.to_string();
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        });
        if held.as_deref() != Some(token.as_bytes()) {
            return Err(TokenError::Revoked(format!(
                "secret {ns}/{secret} no longer holds this token"
            )));
        }
    }
    Ok(identity(&ns, &name))
}

/// `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`: a TokenRequest answered with
/// a fresh token (never stored).
pub(crate) fn token_request(
    api: &Api,
    signer: &Signer,
    ns: &str,
    name: &str,
    request: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Value, ApiError> {
    let sa = api.get(service_accounts(), ns, name)?;
    let spec = request.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let mut causes = Vec::new();
    let raw = |why: &str| Cause {
        reason: "FieldValueInvalid",
        field: "spec.expirationSeconds".into(),
        message: format!("Invalid value: {seconds}: {why}"),
    };
    if seconds < MIN_EXPIRATION_SECONDS {
        causes.push(raw("may not specify a duration less than 10 minutes"));
    }
    if seconds > MAX_EXPIRATION_SECONDS {
        causes.push(raw("may not specify a duration larger than 2^32 seconds"));
    }
    // A token bound to a pod lives only as long as the pod (kubelet's projected tokens).
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let mut bound_pod = None;
    if let Some(b) = bound {
        let kind = b["kind"].as_str().unwrap_or_default();
        let pod_name = b["name"].as_str().unwrap_or_default();
        if kind != "Pod" || b["apiVersion"].as_str().is_some_and(|v| v != "v1") {
            causes.push(Cause::unsupported(
                "spec.boundObjectRef.kind",
                kind,
                &["Pod"],
            ));
        } else {
            match api.get(pods(), ns, pod_name) {
                Ok(p)
                    if b["uid"]
                        .as_str()
                        .is_none_or(|u| u.is_empty() || u == meta::uid(&p)) =>
                {
                    let runs_as = p
                        .pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .unwrap_or("default");
                    if runs_as != name {
                        causes.push(Cause::invalid(
                            "spec.boundObjectRef",
                            pod_name,
                            format!(
                                "cannot bind token for serviceaccount {name:?} to pod running \
                                 with different serviceaccount name {runs_as:?}"
                            ),
                        ));
                    }
                    bound_pod = Some(p);
                }
                _ => causes.push(Cause::invalid(
                    "spec.boundObjectRef",
                    pod_name,
                    "no such pod (with that uid) in the namespace",
                )),
            }
        }
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            &Resource {
                group: "authentication.k8s.io",
                kind: "TokenRequest",
                ..*service_accounts()
            },
            name,
            causes,
        ));
    }
    let mut audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    if audiences.is_empty() {
        audiences.push(ISSUER.to_string());
    }
    let mut claims = claims(&sa, &audiences, now.timestamp(), seconds);
    let mut bound_ref = Value::Null;
    if let Some(p) = &bound_pod {
        claims["kubernetes.io"]["pod"] = json!({"name": meta::name(p), "uid": meta::uid(p)});
        bound_ref = json!({"kind": "Pod", "apiVersion": "v1", "name": meta::name(p),
            "uid": meta::uid(p)});
    }
    let token = signer.sign(&claims);
    let expires = now + chrono::Duration::seconds(seconds);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": meta::timestamp(now)},
        "spec": {"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": bound_ref},
        "status": {"token": token, "expirationTimestamp": meta::timestamp(expires)},
    }))
}

/// Fills a legacy token Secret (`data.token`, `data.ca.crt`, `data.namespace`, the uid
/// annotation) when it names an existing ServiceAccount and has no token yet. Returns the
/// updated Secret, or `None` when there is nothing to do.
pub(crate) fn fill_legacy_secret(
    secret: &Value,
    sa: Option<&Value>,
    signer: &Signer,
    ca_pem: &str,
) -> Option<Value> {
    if secret.get("type").and_then(Value::as_str) != Some(SECRET_TYPE)
        || secret.pointer("/data/token").is_some()
        || secret.pointer("/metadata/deletionTimestamp").is_some()
    {
        return None;
    }
    let sa = sa?;
    let wanted_uid = secret
        .pointer(&format!(
            "/metadata/annotations/{}",
            SA_UID_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty());
    if wanted_uid.is_some_and(|u| u != meta::uid(sa)) {
        return None;
    }
    let (ns, name) = (meta::namespace(secret), meta::name(secret));
    let claims = json!({
        "iss": LEGACY_ISSUER,
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": name,
        "kubernetes.io/serviceaccount/service-account.name": meta::name(sa),
        "kubernetes.io/serviceaccount/service-account.uid": meta::uid(sa),
        "sub": format!("system:serviceaccount:{ns}:{}", meta::name(sa)),
    });
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut out = secret.clone();
    out["metadata"]["annotations"][SA_UID_ANNOTATION] = json!(meta::uid(sa));
    if !out.get("data").is_some_and(Value::is_object) {
        out["data"] = json!({});
    }
    out["data"]["token"] = json!(b(&signer.sign(&claims)));
    out["data"]["ca.crt"] = json!(b(ca_pem));
    out["data"]["namespace"] = json!(b(ns));
    Some(out)
}

fn fill(api: &Api, signer: &Signer, ca_pem: &str, secret: &Value) {
    let sa_name = secret
        .pointer(&format!(
            "/metadata/annotations/{}",
            SA_NAME_ANNOTATION.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ns = meta::namespace(secret);
    let sa = api.get(service_accounts(), ns, sa_name).ok();
    let Some(filled) = fill_legacy_secret(secret, sa.as_ref(), signer, ca_pem) else {
        return;
    };
    let name = meta::name(secret);
    match api.update(secrets(), ns, name, filled, None, &WriteOptions::default()) {
        Ok(_) => tracing::debug!(
            namespace = ns,
            secret = name,
            "filled a service account token secret"
        ),
        // Changed meanwhile: the next event (or sweep) tries again.
        Err(e) => {
            tracing::debug!(namespace = ns, secret = name, error = %e, "filling a token secret")
        }
    }
}

/// Keeps legacy token Secrets filled (Kubernetes' tokens controller), until `cancel`.
pub async fn run_legacy(
    api: Arc<Api>,
    informers: Arc<Informers>,
    signer: Arc<Signer>,
    ca_pem: String,
    cancel: CancellationToken,
) {
    let inf = informers.get(secrets());
    let mut events = inf.subscribe();
    let sa_inf = informers.get(service_accounts());
    let mut sa_events = sa_inf.subscribe();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let sweep_all = |api: &Api| {
        for s in inf.list("", &LabelSelector::default()) {
            if s.get("type").and_then(Value::as_str) == Some(SECRET_TYPE) {
                fill(api, &signer, &ca_pem, &s);
            }
        }
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(c) = events.recv() => {
                if c.kind != EventType::Deleted
                    && let Ok(secret) = c.object()
                {
                    fill(&api, &signer, &ca_pem, &secret);
                }
            }
            // A Secret created before its ServiceAccount is filled once that appears.
            Some(c) = sa_events.recv() => {
                if c.kind == EventType::Added {
                    sweep_all(&api);
                }
            }
            _ = sweep.tick() => sweep_all(&api),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::system_clock;
    use kedge_store::redb::{Options, RedbStore};

    fn sa_obj() -> Value {
        json!({"metadata": {"name": "bot", "namespace": "team", "uid": "u-1"}})
    }

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let signer = Signer::generate().unwrap();
        let now = 1_800_000_000;
        let t = signer.sign(&claims(&sa_obj(), &[ISSUER.into()], now, 600));
        let c = signer.verify(&t, now + 10).unwrap();
        assert_eq!(c["sub"], "system:serviceaccount:team:bot");
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        assert_eq!(c["exp"], now + 600);
        assert_eq!(signer.verify(&t, now + 600), Err(TokenError::Expired));
        assert_eq!(signer.verify(&t, now - 3600), Err(TokenError::NotYetValid));
        // Another key's signature, a tampered payload, garbage.
        let other = Signer::generate().unwrap();
        assert_eq!(other.verify(&t, now), Err(TokenError::Signature));
        let parts: Vec<&str> = t.split('.').collect();
        let forged = claims(
            &json!({"metadata": {"name": "admin", "namespace": "kube-system",
            "uid": "u-2"}}),
            &[ISSUER.into()],
            now,
            600,
        );
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64url(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(signer.verify(&tampered, now), Err(TokenError::Signature));
        assert_eq!(signer.verify("a.b", now), Err(TokenError::Malformed));
        let none = format!("{}.{}.", b64url(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(signer.verify(&none, now), Err(TokenError::Algorithm));
        // Tokens for another audience are not for the API server.
        let t = signer.sign(&claims(&sa_obj(), &["vault".into()], now, 600));
        assert_eq!(signer.verify(&t, now), Err(TokenError::Audience));
    }

    #[test]
    fn the_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        let a = Signer::load_or_create(&path).unwrap();
        let b = Signer::load_or_create(&path).unwrap();
        let t = a.sign(&claims(&sa_obj(), &[ISSUER.into()], 100, 600));
        assert!(b.verify(&t, 200).is_ok());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn token_requests_and_authentication_follow_the_service_account() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let ns = resources::by_kind("v1", "Namespace").unwrap();
        api.create(ns, "", json!({"metadata": {"name": "team"}}), &w)
            .unwrap();
        api.create(
            service_accounts(),
            "team",
            json!({"metadata": {"name": "bot"}}),
            &w,
        )
        .unwrap();
        let signer = Signer::generate().unwrap();
        let now = chrono::Utc::now();
        let tr = token_request(&api, &signer, "team", "bot", &json!({"spec": {}}), now).unwrap();
        assert_eq!(tr["spec"]["expirationSeconds"], 3600);
        let token = tr["status"]["token"].as_str().unwrap();
        let id = authenticate(&api, &signer, token, now.timestamp()).unwrap();
        assert_eq!(id.user, "system:serviceaccount:team:bot");
        assert!(
            id.groups
                .contains(&"system:serviceaccounts:team".to_string())
        );
        let short = token_request(
            &api,
            &signer,
            "team",
            "bot",
            &json!({"spec": {"expirationSeconds": 60}}),
            now,
        )
        .unwrap_err();
        assert_eq!(short.code, 422);
        assert!(
            short.message.contains("less than 10 minutes"),
            "{}",
            short.message
        );
        assert_eq!(
            token_request(&api, &signer, "team", "nobody", &json!({}), now)
                .unwrap_err()
                .code,
            404
        );

        // Legacy Secret tokens: they must name their ServiceAccount.
        let nameless = json!({"metadata": {"name": "x"}, "type": SECRET_TYPE});
        let e = api.create(secrets(), "team", nameless, &w).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.contains(SA_NAME_ANNOTATION), "{}", e.message);
        let secret = json!({"metadata": {"name": "bot-token", "namespace": "team",
            "annotations": {SA_NAME_ANNOTATION: "bot"}}, "type": SECRET_TYPE});
        api.create(secrets(), "team", secret, &w).unwrap();
        let stored = api.get(secrets(), "team", "bot-token").unwrap();
        fill(&api, &signer, "CA", &stored);
        let filled = api.get(secrets(), "team", "bot-token").unwrap();
        let dec = |k: &str| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(filled["data"][k].as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(dec("ca.crt"), "CA");
        assert_eq!(dec("namespace"), "team");
        let legacy = dec("token");
        assert_eq!(
            authenticate(&api, &signer, &legacy, now.timestamp())
                .unwrap()
                .user,
            "system:serviceaccount:team:bot"
        );

        // Deleting the ServiceAccount revokes both; a new one of the same name has a new uid.
        api.delete(service_accounts(), "team", "bot", &Default::default())
            .unwrap();
        assert!(matches!(
            authenticate(&api, &signer, token, now.timestamp()),
            Err(TokenError::Revoked(_))
        ));
        api.create(
            service_accounts(),
            "team",
            json!({"metadata": {"name": "bot"}}),
            &w,
        )
        .unwrap();
        assert!(matches!(
            authenticate(&api, &signer, token, now.timestamp()),
            Err(TokenError::Revoked(_))
        ));
        assert!(authenticate(&api, &signer, &legacy, now.timestamp()).is_err());
    }
}
