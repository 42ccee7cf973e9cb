//! `kedge server --server https://first:6443 --token K10…::server:…`: a replica joins an
//! existing control plane knowing only one server and the cluster's server token.
//!
//! kedge's servers share nothing but their etcd (see [`crate::bootstrap`]), so joining is
//! learning where that etcd is and how to reach it. The joining server connects to the named
//! server over HTTPS and trusts it only if it presents the CA whose SHA-256 the full token
//! carries (as agents do with their join token, and K3s with its `K10…` token), so the secret
//! is never sent to a server that is not the cluster's. It then asks `GET /kedge/join/server`
//! with the token's secret as its bearer credential; the server compares it (constant time)
//! with its own and answers with its datastore: the etcd client URLs, the key prefix and the
//! PEM files of `--datastore-cafile/-certfile/-keyfile`. From there the replica starts as if
//! given `--datastore-endpoint` and those files, and takes the CA and keys from the bootstrap
//! data in etcd, which the same token opens.
//!
//! What it learned is kept in `<data-dir>/cred/datastore.json` (mode 0600), so the replica
//! restarts while the server it joined through is down, and starts as a replica of the
//! cluster even when started again without `--server`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::bootstrap::ServerToken;

/// The URL a joining server asks.
pub const PATH: &str = "/kedge/join/server";

/// How long a join may take, connect to answer.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What a server tells a joining replica: its datastore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Datastore {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// PEM contents of `--datastore-cafile`, `--datastore-certfile`, `--datastore-keyfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Datastore {
    /// This server's datastore as a joining replica needs it (the files read now, so a
    /// rotated client certificate is what replicas get).
    pub fn of(etcd: &kedge_store::etcd::Options) -> anyhow::Result<Datastore> {
        let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
            p.as_ref()
                .map(|p| std::fs::read_to_string(p).with_context(|| format!("{}", p.display())))
                .transpose()
        };
        Ok(Datastore {
            endpoints: etcd.endpoints.clone(),
            prefix: etcd.root.clone(),
            ca: read(&etcd.ca_file)?,
            cert: read(&etcd.cert_file)?,
            key: read(&etcd.key_file)?,
        })
    }

    /// The store options this describes, its files written under `<data-dir>/cred`.
    fn options(&self, data_dir: &Path) -> anyhow::Result<kedge_store::etcd::Options> {
        let cred = data_dir.join("cred");
        kedge_store::fsmode::private_dir(&cred)?;
        let write = |name: &str, pem: &Option<String>| -> anyhow::Result<Option<PathBuf>> {
            let Some(pem) = pem else { return Ok(None) };
            let path = cred.join(name);
            write_private(&path, pem.as_bytes())?;
            Ok(Some(path))
        };
        let mut o = kedge_store::etcd::Options::new(self.endpoints.clone());
        o.root = self.prefix.clone();
        o.ca_file = write("datastore-ca.crt", &self.ca)?;
        o.cert_file = write("datastore-client.crt", &self.cert)?;
        o.key_file = write("datastore-client.key", &self.key)?;
        Ok(o)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    kedge_store::fsmode::private_file(&tmp)
        .and_then(|()| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Where a joined replica keeps what it learned.
pub fn saved_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cred").join("datastore.json")
}

/// The datastore a replica joined earlier, if this data dir is one's.
pub fn saved(data_dir: &Path) -> anyhow::Result<Option<kedge_store::etcd::Options>> {
    let path = saved_path(data_dir);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let d: Datastore =
        serde_json::from_slice(&text).with_context(|| format!("{}", path.display()))?;
    d.options(data_dir).map(Some)
}

/// The datastore of the cluster `server` belongs to: asked of it (and kept), or, when it
/// cannot be reached, what was kept from an earlier join. A refusal (wrong token, a server
/// on the embedded store, a CA that is not the token's) is an error either way.
pub async fn datastore(
    data_dir: &Path,
    server: &str,
    token: &ServerToken,
) -> anyhow::Result<kedge_store::etcd::Options> {
    let Some(ca_hash) = token.ca_hash.as_deref() else {
        anyhow::bail!(
            "--server needs the full server token, K10<CA sha256>::server:<secret> (the first server's <data-dir>/server-token), so this server can check the other's CA before sending it the secret"
        );
    };
    match tokio::time::timeout(TIMEOUT, ask(server, ca_hash, &token.secret)).await {
        Ok(Ok(d)) => {
            kedge_store::fsmode::private_dir(data_dir)?;
            let options = d.options(data_dir)?;
            write_private(&saved_path(data_dir), &serde_json::to_vec_pretty(&d)?)?;
            tracing::info!(%server, endpoints = %d.endpoints.join(","), "joined: the cluster's datastore");
            Ok(options)
        }
        Ok(Err(Unreachable::No(e))) => Err(e),
        Ok(Err(Unreachable::Yes(e))) => fallback(data_dir, server, e),
        Err(_) => fallback(
            data_dir,
            server,
            anyhow::anyhow!("no answer within {TIMEOUT:?}"),
        ),
    }
}

fn fallback(
    data_dir: &Path,
    server: &str,
    e: anyhow::Error,
) -> anyhow::Result<kedge_store::etcd::Options> {
    match saved(data_dir)? {
        Some(o) => {
            tracing::warn!(%server, error = %format!("{e:#}"), "--server unreachable: using the datastore this replica joined before");
            Ok(o)
        }
        None => Err(e.context(format!("joining through --server {server}"))),
    }
}

/// Whether a failed join may be retried from what was kept (the server was not reached)
/// or must stop the start (it answered, and said no).
enum Unreachable {
    Yes(anyhow::Error),
    No(anyhow::Error),
}

/// `host:port` of a `--server` URL (`https://h:6443`, or `h:6443`; 6443 when no port).
fn authority(server: &str) -> anyhow::Result<(String, u16)> {
    let with_scheme = if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    };
    let url = url::Url::parse(&with_scheme).with_context(|| format!("--server {server:?}"))?;
    if url.scheme() != "https" {
        anyhow::bail!("--server {server:?}: the API is served over https");
    }
    let host = url
        .host_str()
        .with_context(|| format!("--server {server:?}: no host"))?
        .trim_matches(['[', ']'])
        .to_string();
    // The URL parser forgets an explicit :443 (https' default): the port comes from the text.
    let authority = with_scheme
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let after_host = authority.rsplit_once(']').map_or(authority, |(_, p)| p);
    let port = match after_host.rsplit_once(':') {
        Some((_, p)) => p
            .parse()
            .with_context(|| format!("--server {server:?}: port {p:?}"))?,
        None => 6443,
    };
    Ok((host, port))
}

async fn ask(server: &str, ca_hash: &str, secret: &str) -> Result<Datastore, Unreachable> {
    let (host, port) = authority(server).map_err(Unreachable::No)?;
    kedge_tunnel::install_crypto_provider();
    let verifier = Arc::new(kedge_tunnel::agent::PinnedCaVerifier::new(ca_hash));
    let tls = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))
        .map_err(Unreachable::Yes)?;
    // The serving certificate is checked against the pinned CA for the name every server's
    // certificate carries (the address the operator typed may be any of its names).
    let name =
        rustls_pki_types::ServerName::try_from(kedge_tunnel::SERVER_NAME).expect("a valid name");
    let stream = match tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
    {
        Ok(s) => s,
        Err(_) if verifier.mismatched() => {
            return Err(Unreachable::No(anyhow::anyhow!(
                "{server} does not present the CA the token names (sha256 {ca_hash}): not this cluster's server"
            )));
        }
        Err(e) => {
            return Err(Unreachable::Yes(
                anyhow::Error::new(e).context("TLS handshake"),
            ));
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| Unreachable::Yes(e.into()))?;
    tokio::spawn(conn);
    let req = http::Request::get(PATH)
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .expect("a valid request");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Unreachable::Yes(e.into()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Unreachable::Yes(e.into()))?
        .to_bytes();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let e = anyhow::anyhow!("{server} refused the join ({status}): {message}");
        // A server in trouble (5xx), or one that does not know the path (an older one, a
        // proxy in front), may be answered from what was kept; a refusal may not.
        return Err(
            if status.is_server_error() || status == http::StatusCode::NOT_FOUND {
                Unreachable::Yes(e)
            } else {
                Unreachable::No(e)
            },
        );
    }
    serde_json::from_slice(&body)
        .context("the join answer")
        .map_err(Unreachable::No)
}

/// What the server answers joining replicas with: its token's secret and its datastore;
/// `None` on the embedded store, where no replica can join.
pub struct Answer {
    pub secret: String,
    pub datastore: kedge_store::etcd::Options,
}

/// The API's own Status answer for a refused join.
fn status(code: http::StatusCode, reason: &'static str, message: &str) -> axum::response::Response {
    let body = crate::api::ApiError::new(code.as_u16(), reason, message).status();
    axum::response::IntoResponse::into_response((code, axum::Json(body)))
}

/// Compares in time that depends on the lengths only, so a guess does not learn how many of
/// its leading characters were right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves [`PATH`] on the HTTPS router, ahead of the API (a joining server has no
/// credential the API knows, only the server token).
pub fn route(router: axum::Router, answer: Option<Arc<Answer>>) -> axum::Router {
    let handler = move |headers: http::HeaderMap| {
        let answer = answer.clone();
        async move {
            let Some(answer) = answer else {
                return status(
                    http::StatusCode::CONFLICT,
                    "Conflict",
                    "this server keeps its state in the embedded store (redb): replicas can only join a server on etcd (--datastore-endpoint)",
                );
            };
            let given = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .unwrap_or_default();
            if !same_secret(given.as_bytes(), answer.secret.as_bytes()) {
                tracing::warn!("a server join with a wrong server token was refused");
                return status(
                    http::StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "the server token is not this cluster's",
                );
            }
            match Datastore::of(&answer.datastore) {
                Ok(d) => {
                    tracing::info!("a server replica joined: datastore handed over");
                    axum::response::IntoResponse::into_response(axum::Json(d))
                }
                Err(e) => status(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    &format!("reading this server's datastore files: {e:#}"),
                ),
            }
        }
    };
    router.route(PATH, axum::routing::get(handler))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_name_host_and_port() {
        assert_eq!(
            authority("https://10.0.0.1:7443").unwrap(),
            ("10.0.0.1".into(), 7443)
        );
        assert_eq!(authority("first:6443").unwrap(), ("first".into(), 6443));
        assert_eq!(authority("https://first").unwrap(), ("first".into(), 6443));
        assert_eq!(authority("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(authority("https://[::1]").unwrap(), ("::1".into(), 6443));
        assert_eq!(authority("https://lb:443").unwrap(), ("lb".into(), 443));
        assert_eq!(authority("https://lb:443/").unwrap(), ("lb".into(), 443));
        assert!(authority("http://first:6443").is_err());
    }

    #[test]
    fn a_joined_datastore_is_kept_with_private_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        assert!(saved(dir.path()).unwrap().is_none());
        let d = Datastore {
            endpoints: vec!["https://e1:2379".into(), "https://e2:2379".into()],
            prefix: "/c1/".into(),
            ca: Some("CA PEM".into()),
            cert: Some("CERT PEM".into()),
            key: Some("KEY PEM".into()),
        };
        d.options(dir.path()).unwrap();
        write_private(&saved_path(dir.path()), &serde_json::to_vec(&d).unwrap()).unwrap();
        let o = saved(dir.path()).unwrap().unwrap();
        assert_eq!(o.endpoints, d.endpoints);
        assert_eq!(o.root, "/c1/");
        let key = o.key_file.unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "KEY PEM");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(saved_path(dir.path()))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
}
