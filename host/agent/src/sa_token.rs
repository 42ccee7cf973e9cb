//! In-cluster API access, as kubelet gives it: a ServiceAccount token bound to the pod (a
//! TokenRequest with the pod as `boundObjectRef`, so it dies with the pod), the cluster CA and
//! the namespace, at `/var/run/secrets/kubernetes.io/serviceaccount` in every container (a
//! bind mount for OCI, a preopened directory for Wasm), refreshed when 80 % of its life has
//! gone; and the API server's address in `KUBERNETES_SERVICE_HOST`/`_PORT`.
//!
//! There is no service proxy yet, so the address is the API server's own (the one the agent
//! dials), not the `kubernetes` Service's ClusterIP: in-cluster clients reach it directly.
//! `automountServiceAccountToken` (the pod's, else its ServiceAccount's) turns it all off.

use std::path::PathBuf;

use kedge_core::meta;
use serde_json::{Value, json};

use super::objects::VolumeFile;
use super::spec::{MountPlan, PodDirs};
use super::{Ctx, Shared};

/// Where containers find the token, `ca.crt` and `namespace`.
pub(crate) const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// kubelet's token lifetime (an hour and a bit, so its expiry does not line up with others').
const EXPIRATION_SECONDS: i64 = 3607;

fn service_account(pod: &Value) -> &str {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

/// The pod's token directory (in memory, as kubelet keeps it on a tmpfs).
pub(crate) fn dir(dirs: &PodDirs) -> PathBuf {
    dirs.memory.join("volumes").join("kube-api-access")
}

/// Whether the pod gets a token: its `automountServiceAccountToken`, else its
/// ServiceAccount's, else yes. A ServiceAccount that cannot be read (offline) means yes.
async fn wanted(ctx: &Ctx, pod: &Value) -> bool {
    if let Some(b) = pod
        .pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
    {
        return b;
    }
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{}",
        meta::namespace(pod),
        service_account(pod)
    );
    match ctx.client.get(&path).await {
        Ok(sa) => sa["automountServiceAccountToken"].as_bool().unwrap_or(true),
        Err(_) => true,
    }
}

/// How long after a failed renewal the next try comes.
const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// When a pod's token is due for renewal; one lock per pod, held across its renewal.
pub(crate) type Due = std::sync::Arc<tokio::sync::Mutex<Option<chrono::DateTime<chrono::Utc>>>>;

fn due_of(ctx: &Shared, uid: &str) -> Due {
    ctx.sa_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(uid.to_string())
        .or_default()
        .clone()
}

/// Why no token was had.
enum Failure {
    /// The server could not be reached: the pod starts without one (an offline node runs
    /// its pods), and it comes when the link does.
    Unreachable(String),
    /// The server said no (no such ServiceAccount, say): the container waits.
    Refused(String),
}

/// The mount of the pod's token directory for its containers, after making sure the token
/// there is fresh; `None` when the pod gets none. A token that cannot be renewed is kept
/// while it lasts. With none at all and the server unreachable (a node restarted offline),
/// the directory holds `ca.crt` and `namespace` and the token follows once the server
/// answers; a refusal from the server keeps the container from starting.
pub(crate) async fn mount(
    ctx: &Ctx,
    pod: &Value,
    dirs: &PodDirs,
) -> Result<Option<MountPlan>, String> {
    if !wanted(ctx, pod).await {
        return Ok(None);
    }
    let dir = dir(dirs);
    let slot = due_of(ctx, meta::uid(pod));
    let mut due = slot.lock().await;
    let now = (ctx.clock)();
    let has_token = dir.join("token").exists();
    let fresh = due.is_some_and(|at| now < at) && has_token;
    if !fresh {
        match refresh(ctx, pod, dirs).await {
            Ok(at) => *due = Some(at),
            Err(Failure::Unreachable(e) | Failure::Refused(e)) if has_token => {
                tracing::info!(pod = %meta::name(pod), error = %e, "service account token not renewed; keeping the current one");
                *due = Some(now + chrono::Duration::from_std(RETRY).unwrap_or_default());
            }
            Err(Failure::Unreachable(e)) => {
                tracing::info!(pod = %meta::name(pod), error = %e, "no service account token yet: the server is unreachable");
                write_files(ctx, pod, dirs, None).await?;
                *due = Some(now + chrono::Duration::from_std(RETRY).unwrap_or_default());
            }
            Err(Failure::Refused(e)) => return Err(format!("service account token: {e}")),
        }
    }
    Ok(Some(MountPlan {
        destination: MOUNT_PATH.into(),
        source: dir,
        read_only: true,
    }))
}

/// Renews the pod's token when it is due, for as long as the pod runs.
pub(crate) async fn keep_fresh(ctx: &Ctx, pod: &Value, dirs: &PodDirs) {
    if !wanted(ctx, pod).await {
        return std::future::pending().await;
    }
    let slot = due_of(ctx, meta::uid(pod));
    loop {
        let at = *slot.lock().await;
        let wait = match at {
            Some(at) => (at - (ctx.clock)()).to_std().unwrap_or_default(),
            None => RETRY,
        };
        tokio::time::sleep(wait.max(std::time::Duration::from_secs(1))).await;
        if let Err(e) = mount(ctx, pod, dirs).await {
            tracing::debug!(pod = %meta::name(pod), error = %e, "renewing the service account token");
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Forgets a pod's renewal time (its directory goes with the pod's).
pub(crate) fn forget(ctx: &Shared, uid: &str) {
    ctx.sa_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(uid);
}

/// Asks for a token bound to the pod and writes it with `ca.crt` and `namespace`; returns
/// when it is due for renewal.
async fn refresh(
    ctx: &Ctx,
    pod: &Value,
    dirs: &PodDirs,
) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    let ns = meta::namespace(pod);
    let path = format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{}/token",
        service_account(pod)
    );
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": EXPIRATION_SECONDS, "boundObjectRef": {
            "apiVersion": "v1", "kind": "Pod", "name": meta::name(pod), "uid": meta::uid(pod)}}});
    // A namespace just made may not have its `default` ServiceAccount yet (the
    // serviceaccount plugin creates it): wait a little for it rather than fail the start.
    let mut tries = 0;
    let answer = loop {
        match ctx.client.create(&path, &request).await {
            Ok(a) => break a,
            Err(e) if e.code() == Some(404) && tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) if e.code().is_none() => return Err(Failure::Unreachable(e.to_string())),
            Err(e) => return Err(Failure::Refused(e.to_string())),
        }
    };
    let token = answer
        .pointer("/status/token")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Refused("the TokenRequest answer has no token".into()))?
        .to_string();
    let now = (ctx.clock)();
    let expires = answer
        .pointer("/status/expirationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(now + chrono::Duration::seconds(EXPIRATION_SECONDS), |t| {
            t.with_timezone(&chrono::Utc)
        });
    write_files(ctx, pod, dirs, Some(token))
        .await
        .map_err(Failure::Refused)?;
    Ok(renew_at(now, expires))
}

/// When a token issued `now` and expiring at `expires` is renewed: once 80 % of its life is
/// gone, as kubelet does.
fn renew_at(
    now: chrono::DateTime<chrono::Utc>,
    expires: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    let life = (expires - now).num_seconds().max(0);
    now + chrono::Duration::seconds(life * 8 / 10)
}

/// Writes `ca.crt`, `namespace` and (when there is one) `token` into the pod's directory.
async fn write_files(
    ctx: &Ctx,
    pod: &Value,
    dirs: &PodDirs,
    token: Option<String>,
) -> Result<(), String> {
    let ca = std::fs::read(ctx.data_dir.join("tunnel").join("ca.crt"))
        .map_err(|e| format!("reading the cluster CA: {e}"))?;
    let mut files = vec![
        VolumeFile {
            path: "ca.crt".into(),
            bytes: ca,
            mode: 0o644,
        },
        VolumeFile {
            path: "namespace".into(),
            bytes: meta::namespace(pod).as_bytes().to_vec(),
            mode: 0o644,
        },
    ];
    if let Some(token) = token {
        files.push(VolumeFile {
            path: "token".into(),
            bytes: token.into_bytes(),
            mode: 0o644,
        });
    }
    let (dirs, dir) = (dirs.clone(), dir(dirs));
    ctx.volumes
        .with_pod(meta::uid(pod), (ctx.clock)(), move |w| {
            dirs.prepare()
                .map_err(|e| format!("creating the pod's directories: {e}"))?;
            w.write(&dir, &files, true)
                .map(|_| ())
                .map_err(|e| format!("writing {}: {e}", dir.display()))
        })
        .await?
}

/// `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT` and the Docker-link style
/// `KUBERNETES_PORT*` variables, pointing at the API server the agent dials.
pub(crate) fn api_env(server: &str) -> Vec<(String, String)> {
    let (host, port) = match server.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.trim_matches(['[', ']']), p),
        _ => (server, "6443"),
    };
    let url_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let tcp = format!("tcp://{url_host}:{port}");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), tcp.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), tcp),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_at_four_fifths_of_their_life() {
        let t = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap();
        assert_eq!(renew_at(t(1000), t(1000 + 3607)), t(1000 + 2885));
        assert_eq!(
            renew_at(t(1000), t(1000)),
            t(1000),
            "an expired one at once"
        );
        assert_eq!(renew_at(t(1000), t(900)), t(1000));
    }

    #[test]
    fn the_api_server_address_becomes_kubernetes_variables() {
        let env = api_env("10.0.0.5:6443");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.0.0.5"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("6443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.0.0.5:6443"));
        assert_eq!(get("KUBERNETES_PORT_6443_TCP_ADDR"), Some("10.0.0.5"));
        let env = api_env("[fd00::1]:443");
        assert_eq!(env[0].1, "fd00::1");
        assert_eq!(env[3].1, "tcp://[fd00::1]:443");
    }
}
