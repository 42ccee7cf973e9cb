//! The server's way to its nodes: its own tunnels, and, for a node whose tunnel another
//! replica holds (several servers on one etcd), that replica, which takes the request at
//! `/kedge/nodes/<node>/…` (see [`kedge_api::forward`]) over mutual TLS with this replica's
//! own client certificate. Which replica holds a node's tunnel is on the Node
//! ([`crate::server::TUNNEL_SERVER_ANNOTATION`]); where that replica serves, on its identity
//! Lease ([`kedge_plugins::lease::ADDRESS_ANNOTATION`]).

use std::sync::Arc;

use axum::body::Body;
use futures_util::future::BoxFuture;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use kedge_api::Api;
use kedge_api::http::NodeProxy;
use kedge_core::resources;
use kedge_tunnel::server::NodeTunnels;

/// The name every replica's serving certificate carries (the `kubernetes` Service's).
const SERVER_NAME: &str = "kubernetes.default.svc";

pub struct Forwarding {
    pub local: NodeTunnels,
    pub api: Arc<Api>,
    pub replica: String,
    /// Mutual TLS to the other replicas: the cluster CA, this replica's client certificate.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl Forwarding {
    /// The TLS a replica talks to the others with: it trusts the cluster CA and presents a
    /// certificate of the group [`kedge_api::forward::SERVERS_GROUP`], issued now.
    pub fn client_tls(
        pki: &kedge_tunnel::pki::ClusterPki,
        replica: &str,
    ) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let (cert, key) = pki.issue_client(
            &format!("system:kedge-server:{replica}"),
            &[kedge_api::forward::SERVERS_GROUP],
            std::time::Duration::from_secs(365 * 24 * 3600),
        )?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes())?)?;
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
                PrivateKeyDer::from_pem_slice(key.as_bytes())?,
            )?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
    }
}

/// `host:port` of the replica holding `node`'s tunnel, if another one than `replica` does.
fn holder_address(api: &Api, replica: &str, node: &str) -> Option<String> {
    {
        let nodes = resources::by_kind("v1", "Node")?;
        let n = api.get(nodes, "", node).ok()?;
        let holder = n
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(crate::server::TUNNEL_SERVER_ANNOTATION))
            .and_then(Value::as_str)?;
        if holder == replica {
            return None;
        }
        let leases = resources::by_kind("coordination.k8s.io/v1", "Lease")?;
        let lease = api
            .get(
                leases,
                kedge_plugins::lease::NAMESPACE,
                &format!("kedge-server-{holder}"),
            )
            .ok()?;
        lease
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(kedge_plugins::lease::ADDRESS_ANNOTATION))
            .and_then(Value::as_str)
            .map(String::from)
    }
}

impl Forwarding {
    async fn forward(
        &self,
        tls: &tokio_rustls::TlsConnector,
        address: &str,
        node: &str,
        req: http::Request<Body>,
    ) -> anyhow::Result<http::Response<Body>> {
        // A replica that died holding the tunnel must not keep the caller for minutes.
        let stream = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(SERVER_NAME)?;
            anyhow::Ok(tls.connect(name, tcp).await?)
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))??;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = format!("/kedge/nodes/{node}{path}").parse()?;
        parts
            .headers
            .insert(http::header::HOST, http::HeaderValue::from_str(address)?);
        let resp = sender
            .send_request(http::Request::from_parts(parts, body))
            .await?;
        tracing::debug!(node, address, status = %resp.status(), "forwarded to the replica holding the node's tunnel");
        Ok(resp.map(Body::new))
    }
}

impl NodeProxy for Forwarding {
    fn request(
        &self,
        node: &str,
        req: http::Request<Body>,
    ) -> BoxFuture<'_, Result<http::Response<Body>, String>> {
        let node = node.to_string();
        Box::pin(async move {
            if !self.local.is_connected(&node)
                && let Some(tls) = &self.tls
            {
                let api_lookup = {
                    let (node, api, replica) =
                        (node.clone(), self.api.clone(), self.replica.clone());
                    tokio::task::spawn_blocking(move || holder_address(&api, &replica, &node))
                        .await
                        .ok()
                        .flatten()
                };
                if let Some(address) = api_lookup {
                    return self
                        .forward(tls, &address, &node, req)
                        .await
                        .map_err(|e| {
                            tracing::warn!(node, address, error = %format!("{e:#}"), "forwarding to the server holding the node's tunnel failed");
                            format!("through server {address}: {e:#}")
                        });
                }
            }
            self.local
                .request(&node, req)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn local(
        &self,
        node: &str,
        req: http::Request<Body>,
    ) -> BoxFuture<'_, Result<http::Response<Body>, String>> {
        let node = node.to_string();
        Box::pin(async move {
            self.local
                .request(&node, req)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
