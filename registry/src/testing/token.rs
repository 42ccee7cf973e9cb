//! A minimal token server for [`super::TestRegistry`] in [`super::TestAuth::Token`] mode.
//!
//! The registry answers 401 with `WWW-Authenticate: Bearer realm=…,service=…`; the client
//! asks here (`GET /token?service=…&scope=repository:<name>:pull,push`, HTTP basic auth) and
//! gets an ES256 JWT, which the registry verifies against the signing certificate in its
//! `rootcertbundle` (the JWT's `x5c` header carries that certificate). Like Docker Hub for a
//! private repository, an anonymous request gets a token with no access, so the registry
//! still refuses it; wrong credentials get 401 here.
//!
//! Plain HTTP on 127.0.0.1: oci-client takes the realm URL as given, and loopback-only test
//! traffic needs no TLS.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::{Result, fail};

/// The registry's `auth.token.service`; the token's `aud`.
pub const SERVICE: &str = "kedge-test-registry";
/// The registry's `auth.token.issuer`; the token's `iss`.
pub const ISSUER: &str = "kedge-test-issuer";
/// Token lifetime, as Docker Hub's.
const TOKEN_TTL_SECS: u64 = 300;
/// A request is one GET line and a few headers: anything bigger is not a client of ours.
const MAX_REQUEST: usize = 16 << 10;
/// Requests are served one at a time, so a client that stalls holds the server this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept loop checks whether it should stop.
const POLL: Duration = Duration::from_millis(10);

/// One request the token server answered, so tests can prove the token flow was used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The basic-auth user (right or wrong), `None` if anonymous.
    pub user: Option<String>,
    /// The `scope` parameters as sent, e.g. `repository:apps/hello:pull,push`.
    pub scopes: Vec<String>,
    /// 200 (token issued), 401 (bad credentials), 400 or 404 (not a token request).
    pub status: u16,
    /// What the token grants, as `repository:<name>:<actions>`; empty for anonymous.
    pub granted: Vec<String>,
}

/// The running server: a thread accepting on 127.0.0.1, stopped and joined on drop.
pub(super) struct TokenServer {
    pub addr: SocketAddr,
    /// PEM of the signing certificate, for the registry's `rootcertbundle`.
    pub cert_pem: String,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct State {
    username: String,
    password: String,
    signer: Signer,
    /// For unique `jti`s.
    issued: AtomicU64,
    log: Mutex<Vec<TokenRequest>>,
}

impl TokenServer {
    /// Starts serving tokens to `username`/`password` on a free loopback port.
    pub fn start(username: &str, password: &str) -> Result<Self> {
        let (signer, cert_pem) = Signer::new()?;
        let state = Arc::new(State {
            username: username.to_owned(),
            password: password.to_owned(),
            signer,
            issued: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").map_err(fail)?;
        // Non-blocking accept, so the loop sees `stop` within one `POLL`.
        listener.set_nonblocking(true).map_err(fail)?;
        let addr = listener.local_addr().map_err(fail)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, state) = (Arc::clone(&stop), Arc::clone(&state));
            std::thread::Builder::new()
                .name("kedge-test-token-server".to_owned())
                .spawn(move || serve(&listener, &stop, &state))
                .map_err(fail)?
        };
        Ok(Self {
            addr,
            cert_pem,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// The registry's `auth.token.realm`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool, state: &State) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A client that hangs up or stalls is its own problem; keep serving.
                let _ = handle(stream, state);
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn handle(mut stream: TcpStream, state: &State) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return stream.write_all(&response(400, &serde_json::json!({"details": "too big"})));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (status, body, request) = answer(&String::from_utf8_lossy(&head), state, now);
    if let Some(request) = request {
        state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request);
    }
    stream.write_all(&response(status, &body))?;
    stream.flush()
}

fn response(status: u16, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let challenge = if status == 401 {
        "WWW-Authenticate: Basic realm=\"kedge-test-token\"\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{challenge}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Status, JSON body and what to log for one request head, at unix time `now`.
fn answer(head: &str, state: &State, now: u64) -> (u16, serde_json::Value, Option<TokenRequest>) {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default();
    let target = request_line.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/token" {
        return (404, serde_json::json!({"details": "not found"}), None);
    }
    let mut service = None;
    let mut scopes = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match percent_decode(key).as_str() {
            "service" => service = Some(value),
            // Several scopes come as repeated parameters or space-separated.
            "scope" => scopes.extend(value.split(' ').map(str::to_owned)),
            _ => {}
        }
    }
    let mut request = TokenRequest {
        user: None,
        scopes,
        status: 200,
        granted: Vec::new(),
    };
    let refuse = |status: u16, details: &str, mut request: TokenRequest| {
        request.status = status;
        (
            status,
            serde_json::json!({"details": details}),
            Some(request),
        )
    };
    if service.as_deref().is_some_and(|s| s != SERVICE) {
        return refuse(400, "unknown service", request);
    }
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    if let Some(authorization) = authorization {
        let Some((user, password)) = basic_credentials(&authorization) else {
            return refuse(401, "unsupported authorization", request);
        };
        let right = user == state.username && password == state.password;
        request.user = Some(user);
        if !right {
            return refuse(401, "incorrect username or password", request);
        }
    }

    // Anonymous gets a token with no access: the registry, not we, says no.
    let mut access = Vec::new();
    if request.user.is_some() {
        for scope in &request.scopes {
            let Some((kind, rest)) = scope.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| matches!(*a, "pull" | "push"))
                .collect();
            if kind != "repository" || actions.is_empty() {
                continue;
            }
            request
                .granted
                .push(format!("repository:{name}:{}", actions.join(",")));
            access.push(serde_json::json!({
                "type": "repository",
                "name": name,
                "actions": actions,
            }));
        }
    }
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": request.user.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": now + TOKEN_TTL_SECS,
        // A little slack for a registry whose clock reads a moment earlier.
        "nbf": now.saturating_sub(10),
        "iat": now,
        "jti": format!("kedge-test-{}", state.issued.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let token = match state.signer.sign(&claims) {
        Ok(t) => t,
        Err(e) => return refuse(500, &e.0, request),
    };
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": TOKEN_TTL_SECS,
        "issued_at": rfc3339(now),
    });
    (200, body, Some(request))
}

/// `(user, password)` from `Basic base64(user:password)`.
fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Decodes a query component (`%XX` and `+`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `issued_at`: unix seconds as RFC 3339 UTC (Howard Hinnant's `civil_from_days`).
fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// ES256 JWT signer with a fresh P-256 key and a self-signed certificate for it.
struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    /// base64 (standard, padded, as RFC 7515 `x5c` wants) of the certificate's DER.
    x5c: String,
}

impl Signer {
    /// The signer and its certificate as PEM. The certificate is self-signed, so in the
    /// registry's bundle it verifies as its own root.
    fn new() -> Result<(Self, String)> {
        use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kedge test token signer");
        let cert = params.self_signed(&key_pair).map_err(fail)?;
        let rng = SystemRandom::new();
        // JWS wants the raw r||s signature, not the DER one certificates use.
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|e| fail(format!("token signing key: {e}")))?;
        let signer = Self {
            key,
            rng,
            x5c: STANDARD.encode(cert.der()),
        };
        Ok((signer, cert.pem()))
    }

    fn sign(&self, claims: &serde_json::Value) -> Result<String> {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|e| fail(format!("signing a token: {e}")))?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, KeyPair as _, UnparsedPublicKey};

    use super::*;

    fn state() -> State {
        State {
            username: "kedge".to_owned(),
            password: "pw".to_owned(),
            signer: Signer::new().unwrap().0,
            issued: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        }
    }

    fn get(authorization: Option<(&str, &str)>) -> String {
        let mut head = "GET /token?scope=repository%3Aapps%2Fhello%3Apull%2Cpush\
                        &service=kedge-test-registry HTTP/1.1\r\nHost: x\r\n"
            .to_owned();
        if let Some((user, password)) = authorization {
            let encoded = STANDARD.encode(format!("{user}:{password}"));
            head.push_str(&format!("Authorization: Basic {encoded}\r\n"));
        }
        head + "\r\n"
    }

    /// The claims of `token` after checking its ES256 signature with `state`'s key.
    fn verified_claims(state: &State, token: &str) -> serde_json::Value {
        let (input, signature) = token.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            state.signer.key.public_key().as_ref(),
        )
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .unwrap();
        let (header, claims) = input.split_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["x5c"][0], state.signer.x5c.as_str());
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap()
    }

    #[test]
    fn right_credentials_get_the_requested_access() {
        let state = state();
        let (status, body, request) = answer(&get(Some(("kedge", "pw"))), &state, 1000);
        assert_eq!(status, 200);
        assert_eq!(body["token"], body["access_token"]);
        let claims = verified_claims(&state, body["token"].as_str().unwrap());
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "kedge");
        assert_eq!(claims["exp"], 1300);
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type": "repository", "name": "apps/hello",
                                "actions": ["pull", "push"]}])
        );
        let request = request.unwrap();
        assert_eq!(request.scopes, ["repository:apps/hello:pull,push"]);
        assert_eq!(request.granted, ["repository:apps/hello:pull,push"]);
    }

    #[test]
    fn anonymous_gets_a_token_without_access_and_wrong_password_gets_401() {
        let state = state();
        let (status, body, _) = answer(&get(None), &state, 1000);
        assert_eq!(status, 200);
        let claims = verified_claims(&state, body["token"].as_str().unwrap());
        assert_eq!(claims["access"], serde_json::json!([]));
        assert_eq!(claims["sub"], "");

        let (status, body, request) = answer(&get(Some(("kedge", "nope"))), &state, 1000);
        assert_eq!(status, 401);
        assert!(body.get("token").is_none());
        assert_eq!(request.unwrap().user.as_deref(), Some("kedge"));
    }

    #[test]
    fn issued_at_is_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
