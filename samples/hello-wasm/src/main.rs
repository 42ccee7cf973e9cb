//! A tiny pod workload for kedge: built for `wasm32-wasip2` it is a WASI P2 command component.
//!
//! It greets with the pod's name and namespace (from `POD_NAME` / `POD_NAMESPACE`, which the
//! node agent sets), then stays up printing a heartbeat every 30 s, like a small service. Set
//! `HELLO_EXIT_AFTER_SECS` to make it exit after that many seconds with `HELLO_EXIT_CODE`
//! (default 1), which exercises restart policies and back-off. Set `HELLO_LISTEN` to a port
//! (or `address:port`) to serve the greeting over HTTP there instead (WASI sockets; pods
//! share the node's network), which `kubectl port-forward` reaches. The server also has what
//! probes need: `/healthz` answers 200 while the program is ready and 503 once `/ready/off`
//! was asked (`/ready/on` turns it back), and `/hang` makes it stop answering anything, as a
//! hung service does.
//!
//! With `--once` as its first argument it greets and exits 0: what `kubectl exec POD -- hello
//! --once` runs (exec in a Wasm container starts its program again with the exec's arguments).
//! With `--cat PATH` it prints the file at `PATH` (a pod's volume, which the guest sees as a
//! preopened directory) and exits 0, or 1 if it cannot be read: `kubectl exec POD -- hello
//! --cat /etc/config/key` is how a test sees what a Wasm container reads. With `--get
//! HOST:PORT[/PATH]` it makes one HTTP/1.0 GET (the name resolved as the pod resolves names,
//! e.g. a Service's) and prints the response body, exiting 1 on failure: a Wasm client for
//! the service-networking tests.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

const HEARTBEAT: Duration = Duration::from_secs(30);

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

/// Answers every connection on `addr` with `greeting` as a plain-text HTTP response.
fn serve(addr: std::net::SocketAddr, greeting: &str) -> ! {
    let listener = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            exit(1);
        }
    };
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    let greeting = format!("{greeting}\n");
    let mut ready = true;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // Read the request head, then answer by its path and close.
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
            "/healthz" if ready => ("200 OK", "ok\n".to_owned()),
            "/healthz" => ("503 Service Unavailable", "not ready\n".to_owned()),
            "/ready/on" | "/ready/off" => {
                ready = path == "/ready/on";
                println!("ready: {ready}");
                ("200 OK", format!("ready: {ready}\n"))
            }
            "/hang" => {
                println!("hanging: no more answers");
                let _ = std::io::stdout().flush();
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            _ => ("200 OK", greeting.clone()),
        };
        let _ = write!(
            conn,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = std::io::stdout().flush();
    }
    exit(0)
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
        let mut conn = std::net::TcpStream::connect(authority)?;
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
    if let Ok(listen) = std::env::var("HELLO_LISTEN") {
        let addr = match listen.trim().parse::<u16>() {
            Ok(port) => Ok(std::net::SocketAddr::from(([0, 0, 0, 0], port))),
            Err(_) => listen.trim().parse::<std::net::SocketAddr>(),
        };
        match addr {
            Ok(addr) => serve(addr, &greeting),
            Err(_) => eprintln!("ignoring HELLO_LISTEN={listen:?}: not a port or address:port"),
        }
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
