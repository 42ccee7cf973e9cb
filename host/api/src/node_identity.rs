//! Node identity on the server side: the list of revoked nodes and the bootstrap-token
//! listing behind `kedge token list`.
//!
//! Revocations live in the ConfigMap `kube-system/kedge-node-revocations`, one key per node
//! (`<node>: <RFC 3339 time>`): every certificate of that node issued at or before the time
//! is refused, at the tunnel and on HTTPS. A ConfigMap rather than an annotation on the Node
//! because a node may update its own Node object (and could lift its own revocation), and
//! because a revocation must outlive `kubectl delete node`; one object rather than one per
//! node so the whole list is a single cached lookup. It is not a Secret: it holds no secret.
//! The server reads it from the ConfigMap informer's cache (watch-fed), so a handshake never
//! touches the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use kedge_core::meta::Clock;
use kedge_tunnel::server::{BootstrapValidator, ValidToken};
use kedge_tunnel::token::BootstrapToken;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Api;
use kedge_core::resources::{self, Resource};
use kedge_store::informer::Informers;
use kedge_tunnel::revocation::Revocations;

pub const REVOCATIONS_NAMESPACE: &str = "kube-system";
pub const REVOCATIONS_NAME: &str = "kedge-node-revocations";

pub fn configmaps() -> &'static Resource {
    resources::by_kind("v1", "ConfigMap").expect("configmaps are served")
}

/// The revocation list a ConfigMap holds. Values that do not parse are skipped with a
/// warning: a typo must not lock every node out, nor silently un-revoke the others.
pub(crate) fn parse_revocations(cm: &Value) -> HashMap<String, SystemTime> {
    let mut out = HashMap::new();
    let Some(data) = cm.get("data").and_then(Value::as_object) else {
        return out;
    };
    for (node, v) in data {
        match v.as_str().map(DateTime::parse_from_rfc3339) {
            Some(Ok(t)) => {
                out.insert(node.clone(), SystemTime::from(t.with_timezone(&Utc)));
            }
            _ => {
                tracing::warn!(node, value = %v, "{REVOCATIONS_NAMESPACE}/{REVOCATIONS_NAME}: not an RFC 3339 time; ignored")
            }
        }
    }
    out
}

/// Fills the list from the store, synchronously, so that no revoked node slips in between
/// the tunnel starting to accept and the informer's first sync.
pub fn load(api: &Api, revocations: &Revocations) {
    if let Ok(cm) = api.get(configmaps(), REVOCATIONS_NAMESPACE, REVOCATIONS_NAME) {
        revocations.replace(parse_revocations(&cm));
    }
}

/// Keeps the list in step with the ConfigMap until `cancel`. The tunnel server closes the
/// live tunnels of newly revoked nodes when the list changes.
pub async fn run(
    informers: Arc<Informers>,
    revocations: Arc<Revocations>,
    cancel: CancellationToken,
) {
    let inf = informers.get(configmaps());
    let mut events = inf.subscribe();
    let refresh = || {
        let list = inf
            .get(REVOCATIONS_NAMESPACE, REVOCATIONS_NAME)
            .map(|cm| parse_revocations(&cm))
            .unwrap_or_default();
        revocations.replace(list);
    };
    tokio::select! {
        () = cancel.cancelled() => return,
        () = inf.wait_synced() => refresh(),
    }
    loop {
        let change = tokio::select! {
            () = cancel.cancelled() => return,
            c = events.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        let meta = &change.head["metadata"];
        if meta["namespace"] == REVOCATIONS_NAMESPACE && meta["name"] == REVOCATIONS_NAME {
            refresh();
        }
    }
}

/// One row of `kedge token list`.
#[derive(Debug, PartialEq)]
pub struct TokenRow {
    pub id: String,
    pub expires: Option<DateTime<Utc>>,
    pub usages: Vec<String>,
    pub description: String,
    /// `auth-extra-groups` of a token Secret made by other means (kubeadm's). Shown, never
    /// used: kedge's bootstrap tokens authorize joining a node and nothing else.
    pub extra_groups: Vec<String>,
}

/// Checks `kedge token create --description`: any length (as kubeadm), but one line of
/// printable text, since `kedge token list` prints one line per token.
pub fn validate_description(d: &str) -> Result<(), String> {
    match d.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "--description must be one line of text; it contains {c:?}"
        )),
        None => Ok(()),
    }
}

/// The bootstrap tokens in a Secret list (other Secrets are skipped), by id. Never the
/// secret half: listing is for managing tokens, not for handing them out again.
pub fn token_rows(list: &Value) -> Vec<TokenRow> {
    let mut rows: Vec<TokenRow> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["type"] == "bootstrap.kubernetes.io/token")
        .filter_map(|s| {
            let id = secret_field(s, "token-id")?;
            let usages = s["data"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("usage-bootstrap-"))
                .filter(|u| {
                    secret_field(s, &format!("usage-bootstrap-{u}")).as_deref() == Some("true")
                })
                .map(str::to_owned)
                .collect();
            Some(TokenRow {
                id,
                expires: secret_field(s, "expiration")
                    .and_then(|e| DateTime::parse_from_rfc3339(&e).ok())
                    .map(|e| e.with_timezone(&Utc)),
                usages,
                description: secret_field(s, "description").unwrap_or_default(),
                extra_groups: secret_field(s, "auth-extra-groups")
                    .map(|g| {
                        g.split(',')
                            .map(str::trim)
                            .filter(|g| !g.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// Time left as kubeadm prints it: the largest unit, rounded down (`23h`, `59m`, `6d`).
fn ttl(expires: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(e) = expires else {
        return "<forever>".into();
    };
    let left = (e - now).num_seconds();
    match left {
        ..=0 => "<expired>".into(),
        1..60 => format!("{left}s"),
        60..3600 => format!("{}m", left / 60),
        3600..172_800 => format!("{}h", left / 3600),
        _ => format!("{}d", left / 86_400),
    }
}

/// The table `kedge token list` prints. The EXTRA GROUPS column (last, as in kubeadm's) only
/// appears when a token has some: kedge never sets them.
pub fn token_table(rows: &[TokenRow], now: DateTime<Utc>) -> String {
    let extra = rows.iter().any(|r| !r.extra_groups.is_empty());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.id.clone(),
                ttl(r.expires, now),
                r.expires
                    .map_or_else(|| "<never>".into(), kedge_core::meta::timestamp),
                r.usages.join(","),
                r.description.clone(),
            ];
            if extra {
                row.push(r.extra_groups.join(","));
            }
            row
        })
        .collect();
    let mut header: Vec<String> = ["ID", "TTL", "EXPIRES", "USAGES", "DESCRIPTION"]
        .map(String::from)
        .into();
    if extra {
        header.push("EXTRA GROUPS".into());
    }
    let mut width = vec![0usize; header.len()];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row
            .iter()
            .zip(&width)
            .map(|(c, &w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Bootstrap tokens live where Kubernetes keeps them: Secrets `bootstrap-token-<id>` of type
/// `bootstrap.kubernetes.io/token` in kube-system.
pub struct StoreTokens {
    pub api: Arc<Api>,
    pub clock: Clock,
}

impl BootstrapValidator for StoreTokens {
    fn validate(
        &self,
        token: &BootstrapToken,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Option<ValidToken>, String>> + Send + '_>,
    > {
        let res = resources::by_kind("v1", "Secret").expect("secrets are served");
        // A deleted token is simply not found; a failing store is no answer about the token.
        let found = match self
            .api
            .get(res, "kube-system", &format!("bootstrap-token-{}", token.id))
        {
            Ok(s) => Some(s),
            Err(e) if e.code == 404 => None,
            Err(e) => return Box::pin(async move { Err(e.to_string()) }),
        };
        let valid = found
            .filter(|s| token_secret_valid(s, token, (self.clock)()))
            .map(|s| ValidToken {
                created: s
                    .pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(std::time::SystemTime::from),
            });
        Box::pin(async move { Ok(valid) })
    }
}

/// A Secret's `data` field `k`, base64-decoded as UTF-8.
pub(crate) fn secret_field(s: &Value, k: &str) -> Option<String> {
    let b64 = s.pointer(&format!("/data/{k}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    String::from_utf8(bytes).ok()
}

pub(crate) fn token_secret_valid(
    s: &Value,
    token: &BootstrapToken,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    if s.get("type").and_then(Value::as_str) != Some("bootstrap.kubernetes.io/token") {
        return false;
    }
    if secret_field(s, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return false;
    }
    if let Some(exp) = secret_field(s, "expiration") {
        match chrono::DateTime::parse_from_rfc3339(&exp) {
            Ok(t) if t.with_timezone(&chrono::Utc) > now => {}
            _ => return false,
        }
    }
    secret_field(s, "token-secret").is_some_and(|sec| token.secret_matches(&sec))
}

/// The Secret that makes `token` valid for node bootstrap.
pub fn token_secret(
    token: &BootstrapToken,
    expiration: Option<chrono::DateTime<chrono::Utc>>,
) -> Value {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut data = json!({
        "token-id": b(&token.id),
        "token-secret": b(&token.secret),
        "usage-bootstrap-authentication": b("true"),
        "description": b("kedge node bootstrap token"),
    });
    if let Some(e) = expiration {
        data["expiration"] = json!(b(&kedge_core::meta::timestamp(e)));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{}", token.id), "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_tunnel::token::BootstrapToken;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn revocations_parse_and_skip_garbage() {
        let cm = json!({"data": {"n1": "2026-11-26T06:00:00Z", "n2": "yesterday"}});
        let list = parse_revocations(&cm);
        assert_eq!(list.len(), 1);
        assert_eq!(
            list["n1"],
            SystemTime::from(at("2026-11-26T06:00:00Z")),
            "{list:?}"
        );
        assert!(parse_revocations(&json!({})).is_empty());
    }

    /// Guards that expired, deleted (absent) and mis-typed tokens never validate.
    #[test]
    fn token_validity() {
        let now = at("2026-11-26T06:00:00Z");
        let token = BootstrapToken::generate();
        let valid = |s: &Value| token_secret_valid(s, &token, now);
        assert!(valid(&token_secret(&token, None)));
        assert!(valid(&token_secret(
            &token,
            Some(now + chrono::Duration::minutes(1))
        )));
        let expired = token_secret(&token, Some(now - chrono::Duration::seconds(1)));
        assert!(!valid(&expired), "expired");
        let mut wrong_type = token_secret(&token, None);
        wrong_type["type"] = json!("Opaque");
        assert!(!valid(&wrong_type));
        let other = BootstrapToken::generate();
        assert!(!token_secret_valid(
            &token_secret(&other, None),
            &token,
            now
        ));
    }

    #[test]
    fn token_list_shows_ids_ttl_and_usages_never_secrets() {
        let now = at("2026-11-26T06:00:00Z");
        let a: BootstrapToken = "aaaaaa.0123456789abcdef".parse().unwrap();
        let b: BootstrapToken = "bbbbbb.0123456789abcdef".parse().unwrap();
        let c: BootstrapToken = "cccccc.0123456789abcdef".parse().unwrap();
        let list = json!({"items": [
            token_secret(&b, Some(now + chrono::Duration::hours(23) + chrono::Duration::minutes(5))),
            token_secret(&a, None),
            token_secret(&c, Some(now - chrono::Duration::hours(1))),
            {"type": "Opaque", "data": {"token-id": "eHh4eHh4"}},
        ]});
        let rows = token_rows(&list);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].id, "aaaaaa");
        assert_eq!(rows[0].usages, ["authentication"]);
        let table = token_table(&rows, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("ID ") && lines[0].contains("USAGES"),
            "{table}"
        );
        assert!(
            lines[1].contains("<forever>") && lines[1].contains("<never>"),
            "{table}"
        );
        assert!(
            lines[2].contains("23h") && lines[2].contains("2026-11-27T05:05:00Z"),
            "{table}"
        );
        assert!(lines[3].contains("<expired>"), "{table}");
        assert!(!table.contains("0123456789abcdef"), "{table}");
        assert!(!table.contains("EXTRA GROUPS"), "none has any: {table}");
    }

    #[test]
    fn token_list_shows_descriptions_and_extra_groups_set_by_others() {
        use base64::Engine as _;
        let b = |s: &str| json!(base64::engine::general_purpose::STANDARD.encode(s));
        let now = at("2026-11-26T06:00:00Z");
        let a: BootstrapToken = "aaaaaa.0123456789abcdef".parse().unwrap();
        let k: BootstrapToken = "kkkkkk.0123456789abcdef".parse().unwrap();
        let mut ours = token_secret(&a, None);
        ours["data"]["description"] = b("shop 17, till Friday");
        let mut kubeadm = token_secret(&k, None);
        kubeadm["data"]["auth-extra-groups"] =
            b("system:bootstrappers:kubeadm:default-node-token,system:x");
        let rows = token_rows(&json!({"items": [kubeadm, ours]}));
        assert_eq!(rows[0].description, "shop 17, till Friday");
        assert!(rows[0].extra_groups.is_empty());
        assert_eq!(
            rows[1].extra_groups,
            [
                "system:bootstrappers:kubeadm:default-node-token",
                "system:x"
            ]
        );
        let table = token_table(&rows, now);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("DESCRIPTION") && lines[0].ends_with("EXTRA GROUPS"),
            "{table}"
        );
        assert!(lines[1].ends_with("shop 17, till Friday"), "{table}");
        assert!(
            lines[2].ends_with("system:bootstrappers:kubeadm:default-node-token,system:x"),
            "{table}"
        );
    }

    #[test]
    fn descriptions_are_one_line() {
        assert!(validate_description("shop 17 (Zürich), till Friday").is_ok());
        assert!(validate_description(&"x".repeat(10_000)).is_ok());
        for bad in ["two\nlines", "tab\there", "bell\u{7}"] {
            let e = validate_description(bad).unwrap_err();
            assert!(e.starts_with("--description must be one line"), "{e}");
        }
    }
}
