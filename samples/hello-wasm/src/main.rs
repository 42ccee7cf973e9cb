//! A tiny pod workload for kedge: built for `wasm32-wasip2` it is a WASI P2 command component.
//!
//! It greets with the pod's name and namespace (from `POD_NAME` / `POD_NAMESPACE`, which the
//! node agent sets), then stays up printing a heartbeat every 30 s, like a small service. Set
//! `HELLO_EXIT_AFTER_SECS` to make it exit after that many seconds with `HELLO_EXIT_CODE`
//! (default 1), which exercises restart policies and back-off. Set `HELLO_LISTEN` to a port
//! (or `address:port`) to serve the greeting over HTTP there instead (WASI sockets, on the
//! pod's network), which `kubectl port-forward` and Services reach. The server also has what
//! probes need: `/healthz` answers 200 while the program is ready and 503 once `/ready/off`
//! was asked (`/ready/on` turns it back), and `/hang` makes it stop answering anything, as a
//! hung service does. Set `HELLO_UDP` to a port (or `address:port`) to answer every UDP
//! datagram there, to its sender, with `<greeting> got <payload>`: a UDP echo for Services'
//! UDP ports. Both may be set: WASI P2 has no threads, so one loop then polls both sockets,
//! non-blocking, with short sleeps between rounds. Set `HELLO_BURN` (to anything) to make it
//! spin on the CPU forever after its greeting, never sleeping: a busy pod for `kubectl top`
//! and autoscaling tests.
//!
//! With `--once` as its first argument it greets and exits 0: what `kubectl exec POD -- hello
//! --once` runs (exec in a Wasm container starts its program again with the exec's arguments).
//! With `--cat PATH` it prints the file at `PATH` (a pod's volume, which the guest sees as a
//! preopened directory) and exits 0, or 1 if it cannot be read: `kubectl exec POD -- hello
//! --cat /etc/config/key` is how a test sees what a Wasm container reads. With `--get
//! HOST:PORT[/PATH]` it makes one HTTP/1.0 GET (the name resolved as the pod resolves names,
//! e.g. a Service's) and prints the response body, exiting 1 on failure: a Wasm client for
//! the service-networking tests. With `--udp HOST:PORT MESSAGE` it sends `MESSAGE` in one
//! datagram, again each second until an answer comes from that address (at most 5 times: UDP
//! may lose any datagram), prints the answer and exits 0, or 1 after the fifth try or on an
//! error: the UDP client of those tests.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long one round of the server loop (or a client waiting for its answer) sleeps when
/// there was nothing to do: short enough that an answer is not noticeably late.
const POLL: Duration = Duration::from_millis(10);
/// The largest UDP payload, so no datagram is cut short.
const MAX_DATAGRAM: usize = 65_535;
/// How many times `--udp` sends its datagram, a second apart, before it gives up.
const UDP_TRIES: u32 = 5;
/// How long an HTTP client may take to send its request: the loop serves nobody else meanwhile.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);

fn env_or_unknown(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| "unknown".to_owned())
}

/// Reads an optional numeric setting; a malformed value is reported and ignored rather than
/// crashing, so a typo in a manifest shows up in the logs.
fn parse_env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("ignoring {name}={raw:?}: not a number");
            None
        }
    }
}

/// Exits with `code` as the host will see it: through `exit-with-code` on WASI P2 (whose plain
/// `exit` only knows success or failure), the usual way elsewhere.
fn exit(code: i32) -> ! {
    #[cfg(all(target_os = "wasi", target_env = "p2"))]
    if let Ok(code) = u8::try_from(code) {
        wasip2::cli::exit::exit_with_code(code);
    }
    std::process::exit(code)
}

/// A port (every address) or `address:port`, as `HELLO_LISTEN` and `HELLO_UDP` take it.
fn listen_addr(raw: &str) -> Option<SocketAddr> {
    match raw.trim().parse::<u16>() {
        Ok(port) => Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Err(_) => raw.trim().parse().ok(),
    }
}

/// [`listen_addr`] of the variable `name`; a malformed value is reported and ignored.
fn listen_env(name: &str) -> Option<SocketAddr> {
    let raw = std::env::var(name).ok()?;
    let addr = listen_addr(&raw);
    if addr.is_none() {
        eprintln!("ignoring {name}={raw:?}: not a port or address:port");
    }
    addr
}

/// The socket bound on `addr`, or why not said and exit 1.
fn bound<S>(what: &str, addr: SocketAddr, bind: std::io::Result<S>) -> S {
    match bind {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot serve {what} on {addr}: {e}");
            exit(1);
        }
    }
}

/// The HTTP server: the greeting, and what the probes see.
struct Http {
    listener: TcpListener,
    greeting: String,
    ready: bool,
}

impl Http {
    /// Reads the request head, then answers by its path and closes.
    fn answer(&mut self, mut conn: TcpStream) {
        // An accepted connection may inherit the listener's non-blocking mode; a client that
        // never sends its request must not hold the loop (and the UDP side) for long.
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(HTTP_READ_TIMEOUT));
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let path = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let (status, body) = match path.as_str() {
            "/healthz" if self.ready => ("200 OK", "ok\n".to_owned()),
            "/healthz" => ("503 Service Unavailable", "not ready\n".to_owned()),
            "/ready/on" | "/ready/off" => {
                self.ready = path == "/ready/on";
                println!("ready: {}", self.ready);
                ("200 OK", format!("ready: {}\n", self.ready))
            }
            "/hang" => {
                println!("hanging: no more answers");
                let _ = std::io::stdout().flush();
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            _ => ("200 OK", self.greeting.clone()),
        };
        let _ = write!(
            conn,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = std::io::stdout().flush();
    }
}

/// Answers one datagram waiting on `socket`, to its sender, with `<greeting> got <payload>`.
fn echo(socket: &UdpSocket, greeting: &str, buf: &mut [u8]) -> std::io::Result<()> {
    let (n, peer) = socket.recv_from(buf)?;
    let answer = format!("{greeting} got {}", String::from_utf8_lossy(&buf[..n]));
    socket.send_to(answer.as_bytes(), peer)?;
    Ok(())
}

/// Serves the greeting over HTTP on `http` and as a UDP echo on `udp`, whichever are given.
/// One of them alone blocks on its socket; both (WASI P2 has no threads) are polled in turn,
/// non-blocking, sleeping [`POLL`] when neither had anything.
fn serve(http: Option<SocketAddr>, udp: Option<SocketAddr>, greeting: &str) -> ! {
    let mut http = http.map(|addr| {
        let listener = bound("HTTP", addr, TcpListener::bind(addr));
        println!("listening on {addr}");
        Http {
            listener,
            greeting: format!("{greeting}\n"),
            ready: true,
        }
    });
    let udp = udp.map(|addr| {
        let socket = bound("UDP", addr, UdpSocket::bind(addr));
        println!("serving UDP on {addr}");
        socket
    });
    let _ = std::io::stdout().flush();
    let polling = match (&http, &udp) {
        (Some(http), Some(udp)) => {
            let nonblocking = http.listener.set_nonblocking(true);
            if let Err(e) = nonblocking.and_then(|()| udp.set_nonblocking(true)) {
                eprintln!("cannot serve HTTP and UDP together (non-blocking sockets): {e}");
                exit(1);
            }
            true
        }
        _ => false,
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let mut idle = true;
        if let Some(http) = &mut http {
            match http.listener.accept() {
                Ok((conn, _)) => {
                    idle = false;
                    http.answer(conn);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    // Not a tight loop if the error stays.
                    eprintln!("accept: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
        if let Some(socket) = &udp {
            match echo(socket, greeting, &mut buf) {
                Ok(()) => idle = false,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    eprintln!("udp: {e}");
                    std::thread::sleep(POLL);
                }
            }
        }
        if polling && idle {
            std::thread::sleep(POLL);
        }
    }
}

/// Copies the file at `path` to stdout and exits.
fn cat(path: &str) -> ! {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut out = std::io::stdout();
            let _ = out.write_all(&bytes);
            let _ = out.flush();
            exit(0)
        }
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            exit(1)
        }
    }
}

/// One HTTP/1.0 GET of `target` (`host:port[/path]`); prints the body and exits.
fn get(target: &str) -> ! {
    let (authority, path) = match target.find('/') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let result = (|| -> std::io::Result<String> {
        let mut conn = TcpStream::connect(authority)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(conn, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut response = String::new();
        conn.read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response) => {
            let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            print!("{body}");
            let _ = std::io::stdout().flush();
            exit(0)
        }
        Err(e) => {
            eprintln!("GET {target}: {e}");
            exit(1)
        }
    }
}

/// Sends `message` to `target` (`host:port`) over UDP until an answer comes from there (at
/// most [`UDP_TRIES`] times, a second apart); prints the answer and exits.
fn udp(target: &str, message: &str) -> ! {
    let result = (|| -> std::io::Result<Option<String>> {
        let peer = target
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(ErrorKind::NotFound, "the name has no address"))?;
        let local = if peer.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let socket = UdpSocket::bind(local)?;
        socket.set_nonblocking(true)?;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        for _ in 0..UDP_TRIES {
            socket.send_to(message.as_bytes(), peer)?;
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                match socket.recv_from(&mut buf) {
                    // As a connected socket would, take answers from the address asked only
                    // (a Service's answers must come back from its ClusterIP, not a backend).
                    Ok((n, from)) if from == peer => {
                        return Ok(Some(String::from_utf8_lossy(&buf[..n]).into_owned()));
                    }
                    Ok((_, from)) => eprintln!("ignoring a datagram from {from} (asked {peer})"),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    })();
    match result {
        Ok(Some(answer)) => {
            println!("{answer}");
            let _ = std::io::stdout().flush();
            exit(0)
        }
        Ok(None) => {
            eprintln!("UDP {target}: no answer after {UDP_TRIES} tries");
            exit(1)
        }
        Err(e) => {
            eprintln!("UDP {target}: {e}");
            exit(1)
        }
    }
}

/// Spins forever: all the CPU one thread gets.
fn burn() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn main() {
    let pod = env_or_unknown("POD_NAME");
    let namespace = env_or_unknown("POD_NAMESPACE");
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, path] = args.as_slice()
        && flag == "--cat"
    {
        cat(path);
    }
    if let [flag, target] = args.as_slice()
        && flag == "--get"
    {
        get(target);
    }
    if let [flag, target, message] = args.as_slice()
        && flag == "--udp"
    {
        udp(target, message);
    }
    let once = args.first().is_some_and(|a| a == "--once");
    if once {
        args.remove(0);
    }

    let mut greeting = format!("hello from {pod} in {namespace}");
    if !args.is_empty() {
        greeting.push_str(" args=");
        greeting.push_str(&args.join(" "));
    }
    println!("{greeting}");
    let _ = std::io::stdout().flush();
    if once {
        exit(0);
    }
    if std::env::var_os("HELLO_BURN").is_some() {
        burn();
    }
    let (http, udp) = (listen_env("HELLO_LISTEN"), listen_env("HELLO_UDP"));
    if http.is_some() || udp.is_some() {
        serve(http, udp, &greeting);
    }

    let exit_after = parse_env::<u64>("HELLO_EXIT_AFTER_SECS").map(Duration::from_secs);
    let exit_code = parse_env::<i32>("HELLO_EXIT_CODE").unwrap_or(1);

    let start = Instant::now();
    let mut beats = 0u64;
    let mut next_beat = HEARTBEAT;
    loop {
        let elapsed = start.elapsed();
        if let Some(after) = exit_after
            && elapsed >= after
        {
            println!("{pod} exiting with code {exit_code}");
            let _ = std::io::stdout().flush();
            exit(exit_code);
        }
        if elapsed >= next_beat {
            beats += 1;
            println!("{pod} still running ({beats})");
            let _ = std::io::stdout().flush();
            next_beat += HEARTBEAT;
        }
        let mut wake = next_beat;
        if let Some(after) = exit_after {
            wake = wake.min(after);
        }
        std::thread::sleep(wake.saturating_sub(start.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_setting_is_a_port_or_an_address() {
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 9376));
        assert_eq!(listen_addr(" 9376\n"), Some(any));
        assert_eq!(
            listen_addr("127.0.0.1:53"),
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)))
        );
        assert_eq!(listen_addr("nine"), None);
        assert_eq!(listen_addr("70000"), None);
    }

    #[test]
    fn the_echo_answers_its_sender_with_the_greeting_and_the_payload() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
            .send_to(b"ping", server.local_addr().unwrap())
            .unwrap();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        echo(&server, "hello from p in ns", &mut buf).unwrap();
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello from p in ns got ping");
        assert_eq!(from, server.local_addr().unwrap());
    }
}
