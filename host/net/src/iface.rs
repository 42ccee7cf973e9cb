//! The dummy interface that carries the userspace proxy's ClusterIPs.
//!
//! A socket can only listen on an address the node owns, and a packet from a pod is only
//! delivered locally if its destination is one of the node's addresses. A dummy interface
//! (no link, never transmits) holding every ClusterIP as a /32 gives both, without
//! touching the node's real interfaces or routes.
//!
//! We drive iproute2's `ip` rather than netlink directly: it is on every node the agent
//! runs on as root, and `ip -batch` applies thousands of addresses in one process.

use std::collections::BTreeSet;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The interface name the agent uses.
pub const DEFAULT_NAME: &str = "kedge-svc0";

/// The address label used on `lo` when the kernel has no dummy interfaces (minimal VM
/// kernels built without `CONFIG_DUMMY`): only addresses carrying it are ever listed or
/// removed, so the loopback's own addresses are never touched.
pub const LOOPBACK_LABEL: &str = "lo:kedge";

/// Whether an [`ensure_dummy`] error means this kernel cannot make dummy interfaces at all
/// (rather than a transient failure), so [`sync_loopback_addresses`] is the way instead.
pub fn dummy_unsupported(error: &io::Error) -> bool {
    error.to_string().contains("Unknown device type")
}

/// Creates the dummy interface `name` if missing and brings it up.
pub fn ensure_dummy(name: &str) -> io::Result<()> {
    Ip::host().ensure_dummy(name)
}

/// Makes `name` hold exactly the `wanted` addresses, each as a /32.
pub fn sync_addresses(name: &str, wanted: &BTreeSet<Ipv4Addr>) -> io::Result<()> {
    Ip::host().sync_addresses(name, wanted)
}

/// Deletes the interface and with it every address on it; missing is fine.
pub fn remove(name: &str) -> io::Result<()> {
    Ip::host().remove(name)
}

/// Like [`sync_addresses`], on `lo` under [`LOOPBACK_LABEL`].
pub fn sync_loopback_addresses(wanted: &BTreeSet<Ipv4Addr>) -> io::Result<()> {
    Ip::host().sync_labelled("lo", LOOPBACK_LABEL, wanted)
}

/// `ip`, optionally aimed at another network namespace (`ip -n`), so tests never touch
/// the host's interfaces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ip {
    netns: Option<String>,
}

impl Ip {
    pub(crate) fn host() -> Ip {
        Ip { netns: None }
    }

    #[cfg(test)]
    pub(crate) fn in_netns(name: &str) -> Ip {
        Ip {
            netns: Some(name.to_string()),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("ip");
        if let Some(ns) = &self.netns {
            c.arg("-n").arg(ns);
        }
        c
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
        let mut c = self.command();
        c.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        let status = self
            .command()
            .args(["link", "show", "dev", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        Ok(status.success())
    }

    pub(crate) fn ensure_dummy(&self, name: &str) -> io::Result<()> {
        if !self.exists(name)? {
            self.run(&["link", "add", name, "type", "dummy"], None)?;
        }
        self.run(&["link", "set", name, "up"], None)?;
        Ok(())
    }

    pub(crate) fn addresses(&self, name: &str) -> io::Result<BTreeSet<Ipv4Addr>> {
        let out = self.run(&["-o", "-4", "addr", "show", "dev", name], None)?;
        Ok(parse_addresses(&out))
    }

    pub(crate) fn sync_addresses(&self, name: &str, wanted: &BTreeSet<Ipv4Addr>) -> io::Result<()> {
        let have = self.addresses(name)?;
        self.apply_difference(name, None, &have, wanted)
    }

    pub(crate) fn labelled_addresses(
        &self,
        dev: &str,
        label: &str,
    ) -> io::Result<BTreeSet<Ipv4Addr>> {
        let out = self.run(
            &["-o", "-4", "addr", "show", "dev", dev, "label", label],
            None,
        )?;
        Ok(parse_addresses(&out))
    }

    pub(crate) fn sync_labelled(
        &self,
        dev: &str,
        label: &str,
        wanted: &BTreeSet<Ipv4Addr>,
    ) -> io::Result<()> {
        let have = self.labelled_addresses(dev, label)?;
        self.apply_difference(dev, Some(label), &have, wanted)
    }

    fn apply_difference(
        &self,
        dev: &str,
        label: Option<&str>,
        have: &BTreeSet<Ipv4Addr>,
        wanted: &BTreeSet<Ipv4Addr>,
    ) -> io::Result<()> {
        let label = label.map(|l| format!(" label {l}")).unwrap_or_default();
        let mut batch = String::new();
        for ip in have.difference(wanted) {
            batch.push_str(&format!("addr del {ip}/32 dev {dev}\n"));
        }
        for ip in wanted.difference(have) {
            batch.push_str(&format!("addr add {ip}/32 dev {dev}{label}\n"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.run(&["-batch", "-"], Some(&batch)).map(drop)
    }

    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        if self.exists(name)? {
            self.run(&["link", "del", name], None)?;
        }
        Ok(())
    }
}

/// Reads the `inet a.b.c.d/len` words of `ip -o -4 addr show`.
fn parse_addresses(out: &str) -> BTreeSet<Ipv4Addr> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A network namespace that is deleted when dropped, panics included.
    pub(crate) struct TestNetns(pub(crate) String);

    impl TestNetns {
        pub(crate) fn new(tag: &str) -> TestNetns {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "kt{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns add {name} failed");
            let ns = TestNetns(name);
            ns.ip(&["link", "set", "lo", "up"]);
            ns
        }

        /// Runs `ip -n <ns> args…`, panicking on failure (test setup).
        pub(crate) fn ip(&self, args: &[&str]) {
            Ip::in_netns(&self.0)
                .run(args, None)
                .unwrap_or_else(|e| panic!("{e}"));
        }

        /// Runs a command inside the namespace, panicking on failure (test setup).
        pub(crate) fn exec(&self, args: &[&str]) {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.0])
                .args(args)
                .output()
                .expect("ip netns exec");
            assert!(
                out.status.success(),
                "{args:?} in {}: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// Why a root-only test cannot run here, if it cannot.
    pub(crate) fn missing_root(tools: &[&str]) -> Option<String> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Some("not root".into());
        }
        for t in tools {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Some(format!("`{t}` is not installed"));
            }
        }
        None
    }

    #[test]
    fn parses_ip_addr_output() {
        let out = "5: kedge-svc0    inet 10.43.0.1/32 scope global kedge-svc0\\       valid_lft forever preferred_lft forever\n\
                   5: kedge-svc0    inet 10.43.0.10/32 scope global kedge-svc0\\       valid_lft forever preferred_lft forever\n";
        let got: Vec<Ipv4Addr> = parse_addresses(out).into_iter().collect();
        assert_eq!(
            got,
            vec![Ipv4Addr::new(10, 43, 0, 1), Ipv4Addr::new(10, 43, 0, 10)]
        );
    }

    #[test]
    fn loopback_fallback_touches_only_labelled_addresses() {
        if let Some(why) = missing_root(&["ip"]) {
            eprintln!("skipping: {why}");
            return;
        }
        let ns = TestNetns::new("lolabel");
        let ip = Ip::in_netns(&ns.0);
        let a: BTreeSet<Ipv4Addr> = ["10.43.0.1", "10.43.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ip.sync_labelled("lo", LOOPBACK_LABEL, &a).unwrap();
        assert_eq!(ip.labelled_addresses("lo", LOOPBACK_LABEL).unwrap(), a);
        ip.sync_labelled("lo", LOOPBACK_LABEL, &BTreeSet::new())
            .unwrap();
        let left = ip.addresses("lo").unwrap();
        assert_eq!(
            left.into_iter().collect::<Vec<_>>(),
            vec![Ipv4Addr::LOCALHOST],
            "127.0.0.1 stays"
        );
    }

    #[test]
    fn dummy_interface_holds_exactly_the_wanted_addresses() {
        if let Some(why) = missing_root(&["ip"]) {
            eprintln!("skipping: {why}");
            return;
        }
        let ns = TestNetns::new("iface");
        let ip = Ip::in_netns(&ns.0);
        if let Err(e) = ip.ensure_dummy(DEFAULT_NAME) {
            if dummy_unsupported(&e) {
                eprintln!("skipping: this kernel has no dummy interfaces ({e})");
                return;
            }
            panic!("{e}");
        }
        ip.ensure_dummy(DEFAULT_NAME).unwrap(); // idempotent
        let a: BTreeSet<Ipv4Addr> = ["10.43.0.1", "10.43.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ip.sync_addresses(DEFAULT_NAME, &a).unwrap();
        assert_eq!(ip.addresses(DEFAULT_NAME).unwrap(), a);
        let b: BTreeSet<Ipv4Addr> = ["10.43.0.2", "10.43.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ip.sync_addresses(DEFAULT_NAME, &b).unwrap();
        assert_eq!(ip.addresses(DEFAULT_NAME).unwrap(), b);
        ip.sync_addresses(DEFAULT_NAME, &BTreeSet::new()).unwrap();
        assert!(ip.addresses(DEFAULT_NAME).unwrap().is_empty());
        ip.remove(DEFAULT_NAME).unwrap();
        assert!(!ip.exists(DEFAULT_NAME).unwrap());
        ip.remove(DEFAULT_NAME).unwrap(); // missing is fine
    }
}
