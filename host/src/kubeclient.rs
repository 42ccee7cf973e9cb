//! A small HTTPS client driven by a kubeconfig, for the CLI's own API calls
//! (`kedge token create`) and for benchmarks.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use kedge_tunnel::token::{BootstrapToken, JoinToken};

/// Connection details read from a kubeconfig (its current context).
pub struct KubeClient {
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    ca_der: Vec<u8>,
}

fn b64(v: &Value, key: &str) -> anyhow::Result<Vec<u8>> {
    let s = v
        .get(key)
        .and_then(|x| x.as_str())
        .with_context(|| format!("kubeconfig has no {key}"))?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .with_context(|| format!("kubeconfig {key} is not base64"))
}

fn named<'a>(doc: &'a Value, list: &str, name: &str, field: &str) -> anyhow::Result<&'a Value> {
    doc.get(list)
        .and_then(|l| l.as_array())
        .and_then(|l| {
            l.iter()
                .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name))
        })
        .and_then(|e| e.get(field))
        .with_context(|| format!("kubeconfig: no {list} entry named {name:?}"))
}

impl KubeClient {
    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        kedge_tunnel::install_crypto_provider();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        let doc = crate::api::body::yaml(text.as_bytes())
            .map_err(|e| anyhow::anyhow!("parsing kubeconfig: {e}"))?;
        let ctx_name = doc
            .get("current-context")
            .and_then(|c| c.as_str())
            .context("kubeconfig has no current-context")?;
        let ctx = named(&doc, "contexts", ctx_name, "context")?;
        let cluster = named(
            &doc,
            "clusters",
            ctx.get("cluster")
                .and_then(|c| c.as_str())
                .unwrap_or_default(),
            "cluster",
        )?;
        let user = named(
            &doc,
            "users",
            ctx.get("user").and_then(|c| c.as_str()).unwrap_or_default(),
            "user",
        )?;
        let server = cluster
            .get("server")
            .and_then(|s| s.as_str())
            .context("kubeconfig cluster has no server")?;
        let url = url::Url::parse(server).context("kubeconfig server URL")?;
        let host = url
            .host_str()
            .context("server URL has no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port().unwrap_or(443);
        let ca_pem = b64(cluster, "certificate-authority-data")?;
        let ca = CertificateDer::from_pem_slice(&ca_pem).context("kubeconfig CA")?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).context("kubeconfig CA")?;
        let cert = CertificateDer::from_pem_slice(&b64(user, "client-certificate-data")?)
            .context("kubeconfig client certificate")?;
        let key = PrivateKeyDer::from_pem_slice(&b64(user, "client-key-data")?)
            .context("kubeconfig client key")?;
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .context("client TLS config")?;
        Ok(KubeClient {
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            ca_der: ca.to_vec(),
        })
    }

    /// A persistent HTTP/1.1 connection (mutual TLS) for many requests in turn; the
    /// connection lives until the returned sender is dropped.
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(self.host.clone()).context("server name")?;
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Connection {
            sender,
            host: self.host.clone(),
        })
    }

    /// One request on a fresh connection; returns the status code and the JSON body.
    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.connect()
            .await?
            .request(method, path, content_type, body)
            .await
    }

    pub fn ca_cert_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&self.ca_der))
    }
}

/// One open connection to the API server.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    /// Sends a request and returns the response with its body still streaming (watches).
    pub async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.host)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(bytes)))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// One request; returns the status code and the JSON body.
    pub async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let resp = self.send(method, path, content_type, body).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
        };
        Ok((code, v))
    }
}

/// `kedge token create`: stores a bootstrap-token Secret and returns the join token.
/// `description` replaces the default one (kubeadm's `--description`).
pub async fn create_join_token(
    kubeconfig: &Path,
    ttl: Option<chrono::Duration>,
    description: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(d) = description {
        crate::node_identity::validate_description(d).map_err(anyhow::Error::msg)?;
    }
    let client = KubeClient::from_kubeconfig(kubeconfig)?;
    let token = BootstrapToken::generate();
    let expiration = ttl.map(|t| chrono::Utc::now() + t);
    let mut secret = crate::api::node_identity::token_secret(&token, expiration);
    if let Some(d) = description {
        secret["data"]["description"] = base64::engine::general_purpose::STANDARD.encode(d).into();
    }
    let (code, body) = client
        .request(
            http::Method::POST,
            "/api/v1/namespaces/kube-system/secrets",
            "application/json",
            Some(&secret),
        )
        .await?;
    if code != 201 {
        anyhow::bail!(
            "the server refused the token ({code}): {}",
            body.get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
    }
    Ok(JoinToken {
        ca_hash: client.ca_cert_hash(),
        token,
    }
    .to_string())
}

fn api_message(body: &Value) -> &str {
    body.get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `kedge token list`: the bootstrap tokens in kube-system.
pub async fn list_join_tokens(
    kubeconfig: &Path,
) -> anyhow::Result<Vec<crate::node_identity::TokenRow>> {
    let client = KubeClient::from_kubeconfig(kubeconfig)?;
    let (code, body) = client
        .request(
            http::Method::GET,
            "/api/v1/namespaces/kube-system/secrets",
            "application/json",
            None,
        )
        .await?;
    if code != 200 {
        anyhow::bail!("listing tokens failed ({code}): {}", api_message(&body));
    }
    Ok(crate::node_identity::token_rows(&body))
}

/// The token id in what an operator pastes: an id, `id.secret`, or a whole join token.
fn token_id(s: &str) -> anyhow::Result<String> {
    let s = s.trim();
    if s.starts_with("K10") {
        return Ok(s.parse::<JoinToken>()?.token.id);
    }
    if s.contains('.') {
        return Ok(s.parse::<BootstrapToken>()?.id);
    }
    let ok = s.len() == 6
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    anyhow::ensure!(ok, "{s:?} is not a token id (6 characters of [a-z0-9])");
    Ok(s.to_owned())
}

/// `kedge token delete`: removes the token's Secret; joining with it fails from then on.
pub async fn delete_join_token(kubeconfig: &Path, token: &str) -> anyhow::Result<String> {
    let id = token_id(token)?;
    let client = KubeClient::from_kubeconfig(kubeconfig)?;
    let (code, body) = client
        .request(
            http::Method::DELETE,
            &format!("/api/v1/namespaces/kube-system/secrets/bootstrap-token-{id}"),
            "application/json",
            None,
        )
        .await?;
    match code {
        200 | 202 => Ok(id),
        404 => anyhow::bail!("no bootstrap token with id {id}"),
        _ => anyhow::bail!(
            "deleting token {id} failed ({code}): {}",
            api_message(&body)
        ),
    }
}

/// `kedge node revoke`: records in `kube-system/kedge-node-revocations` that certificates of
/// `node` issued until now are revoked, and returns that time. "Now" is the API server's
/// clock (its `Date` header), which also stamps the certificates, so an admin machine with a
/// skewed clock cannot miss the node's current certificate or block its re-join.
pub async fn revoke_node(
    kubeconfig: &Path,
    node: &str,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    use crate::node_identity::{REVOCATIONS_NAME, REVOCATIONS_NAMESPACE};
    crate::core::meta::validate_subdomain(node)
        .map_err(|e| anyhow::anyhow!("{node:?} is not a node name: {e}"))?;
    let client = KubeClient::from_kubeconfig(kubeconfig)?;
    let mut conn = client.connect().await?;
    let path = format!("/api/v1/namespaces/{REVOCATIONS_NAMESPACE}/configmaps/{REVOCATIONS_NAME}");
    // Optimistic concurrency: a concurrent revocation makes the write 409; read and retry.
    for _ in 0..5 {
        let resp = conn
            .send(http::Method::GET, &path, "application/json", None)
            .await?;
        let at = resp
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map_or_else(chrono::Utc::now, |d| d.with_timezone(&chrono::Utc));
        let code = resp.status().as_u16();
        let body: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())
            .unwrap_or(Value::Null);
        let stamp = Value::from(crate::core::meta::timestamp(at));
        let (code, body) = match code {
            404 => {
                let cm = serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": REVOCATIONS_NAME, "namespace": REVOCATIONS_NAMESPACE},
                    "data": {node: stamp},
                });
                let create = format!("/api/v1/namespaces/{REVOCATIONS_NAMESPACE}/configmaps");
                conn.request(http::Method::POST, &create, "application/json", Some(&cm))
                    .await?
            }
            200 => {
                let mut cm = body;
                if !cm["data"].is_object() {
                    cm["data"] = serde_json::json!({});
                }
                cm["data"][node] = stamp;
                conn.request(http::Method::PUT, &path, "application/json", Some(&cm))
                    .await?
            }
            _ => anyhow::bail!("reading {path} failed ({code}): {}", api_message(&body)),
        };
        match code {
            200 | 201 => return Ok(at),
            409 => continue,
            _ => anyhow::bail!(
                "recording the revocation failed ({code}): {}",
                api_message(&body)
            ),
        }
    }
    anyhow::bail!("recording the revocation kept conflicting with other writers; try again")
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_ids_from_what_operators_paste() {
        let hash = "0".repeat(64);
        for ok in [
            "abc123",
            "abc123.0123456789abcdef",
            &format!("K10{hash}::abc123.0123456789abcdef"),
        ] {
            assert_eq!(super::token_id(ok).unwrap(), "abc123", "{ok}");
        }
        for bad in ["", "ABC123", "abc12", "../etc", "abc123.x"] {
            assert!(super::token_id(bad).is_err(), "{bad}");
        }
    }

    /// Checked before the kubeconfig is even read.
    #[tokio::test]
    async fn revoke_refuses_what_is_no_node_name() {
        let nowhere = std::path::Path::new("/nonexistent/kubeconfig");
        for bad in ["", "Edge-1", "-edge", "edge..1", "edge_1", &"a".repeat(254)] {
            let e = super::revoke_node(nowhere, bad).await.unwrap_err();
            assert!(e.to_string().contains("is not a node name"), "{bad}: {e}");
        }
        let e = super::revoke_node(nowhere, "edge-1.shop")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("kubeconfig"), "{e}");
    }
}
