//! The agent's API client: plain Kubernetes REST, each request on its own stream of the
//! tunnel connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use kedge_tunnel::agent::TunnelClient;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tunnel: {0}")]
    Tunnel(#[from] kedge_tunnel::Error),
    #[error("API {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("reading the response: {0}")]
    Body(String),
    #[error("decoding the response: {0}")]
    Decode(#[from] serde_json::Error),
}

impl Error {
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Client {
    tunnel: TunnelClient,
}

impl Client {
    pub fn new(tunnel: TunnelClient) -> Self {
        Client { tunnel }
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "kedge-server")
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(bytes))
            .expect("valid request");
        Ok(self.tunnel.request(req).await?)
    }

    /// One request with a JSON answer; non-2xx answers become [`Error::Api`].
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status();
        let bytes = read_body(resp).await?;
        if !status.is_success() {
            return Err(api_error(status.as_u16(), &bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(http::Method::GET, path, "application/json", None)
            .await
    }

    pub async fn create(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(http::Method::POST, path, "application/json", Some(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(http::Method::PUT, path, "application/json", Some(body))
            .await
    }

    pub async fn merge_patch(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(
            http::Method::PATCH,
            path,
            "application/merge-patch+json",
            Some(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str, body: &Value) -> Result<Value> {
        self.call(http::Method::DELETE, path, "application/json", Some(body))
            .await
    }

    /// A watch: one JSON event per line, until the server ends it or the stream breaks.
    pub async fn watch(&self, path: &str) -> Result<WatchLines> {
        let resp = self
            .send(http::Method::GET, path, "application/json", None)
            .await?;
        if !resp.status().is_success() {
            let code = resp.status().as_u16();
            return Err(api_error(code, &read_body(resp).await?));
        }
        Ok(WatchLines {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }
}

/// The whole body of a (non-streaming) response.
async fn read_body(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes> {
    Ok(resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Body(e.to_string()))?
        .to_bytes())
}

/// An error answer: the `Status` body's reason and message (or the raw text).
fn api_error(code: u16, body: &[u8]) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    Error::Api {
        code,
        reason: field("reason").unwrap_or_default(),
        message: field("message")
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string()),
    }
}

pub struct WatchLines {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl WatchLines {
    /// The next event; `None` when the watch ended.
    pub async fn next(&mut self) -> Option<Result<Value>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).map_err(Error::from));
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => return Some(Err(Error::Body(e.to_string()))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
