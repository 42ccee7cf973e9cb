use std::path::PathBuf;

use crate::token::TokenError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the tunnel and PKI can fail with. Variants stay specific so callers can tell an
/// operator what to do (re-join, fix the token, check the server) rather than print a blob.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("a certificate can carry at most 2 organizations (groups), got {0}")]
    TooManyOrganizations(usize),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(#[source] rcgen::Error),
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tls configuration: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("bind udp {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("resolve {server}: {reason}")]
    Resolve { server: String, reason: String },
    #[error("node {0} is not connected")]
    NodeNotConnected(String),
    #[error("connect to {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error(
        "the server's CA certificate does not match the join token (expected sha256 {expected}): wrong token or not a kedge server you trust"
    )]
    CaHashMismatch { expected: String },
    #[error("server refused to join this node: {0}")]
    BootstrapRefused(String),
    /// The server refused the join token itself (unknown, expired, malformed, or older than
    /// the node's revocation): sending it again cannot succeed.
    #[error("server refused the join token: {0}")]
    TokenRefused(String),
    /// A file that holds a secret is open to others, or is not what it seems.
    #[error("refusing {path}: {reason}")]
    InsecureFile { path: PathBuf, reason: String },
    #[error(
        "server refused this node's certificate ({0}); join again: start the agent with a new join token (--token)"
    )]
    CertificateRefused(String),
    #[error(
        "{0} holds no node certificate (node.crt, node.key, ca.crt) and no join token was given (--token, or a join-token file there)"
    )]
    NotJoined(PathBuf),
    #[error(
        "the node certificate {path} expired at {not_after}: this node was offline longer than its certificate lasts; its pods keep running offline. Create a join token on the server (kedge token create) and write it to {token_file} (mode 600, owned by the agent's user; picked up without a restart), or restart the agent with --token"
    )]
    CertificateExpired {
        path: PathBuf,
        not_after: String,
        token_file: PathBuf,
    },
    #[error("server refused to renew the node certificate: {0}")]
    RenewalRefused(String),
    #[error("no tunnel connection to the server within {0:?}")]
    NotConnected(std::time::Duration),
    #[error("tunnel connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("tunnel stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("tunnel stream read: {0}")]
    Read(#[from] quinn::ReadToEndError),
    #[error("http over the tunnel: {0}")]
    Http(#[from] hyper::Error),
    #[error("tunnel protocol: {0}")]
    Protocol(String),
}
