//! A pod's `/etc/resolv.conf`, built from its `dnsPolicy` and `dnsConfig` the way kubelet builds
//! it, so workloads see the same file they would on any Kubernetes node.
//!
//! - `ClusterFirst` (the default): the cluster DNS, the search path
//!   `<ns>.svc.<domain> svc.<domain> <domain>` then the node's search domains, `options ndots:5`.
//!   A `hostNetwork` pod gets `Default` instead; with no cluster DNS on this node the pod falls
//!   back to `Default` too, with a warning.
//! - `ClusterFirstWithHostNet`: `ClusterFirst`, even with `hostNetwork`.
//! - `Default`: the node's nameservers, search domains and options.
//! - `None`: only the pod's `dnsConfig`, which must name a nameserver.
//!
//! `dnsConfig` is merged on top: nameservers and search domains appended and deduplicated,
//! options merged by name with the pod's value winning. The result is then fitted to glibc's
//! limits as kubelet does (3 nameservers, 32 search domains, 2048 characters of search line),
//! trimming with a warning rather than failing; the caller turns warnings into Events.

use std::net::IpAddr;

use serde_json::Value;

/// At most this many nameservers: glibc reads no more (`MAXNS`).
const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (the API's and kubelet's limit).
const MAX_SEARCH_DOMAINS: usize = 32;
/// At most this many characters on the search line (the API's and kubelet's limit).
const MAX_SEARCH_CHARS: usize = 2048;
/// A longer search domain makes some glibc versions abort(), so kubelet drops it.
const MAX_DOMAIN_CHARS: usize = 253;

/// What the node knows that goes into every pod's resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConfig {
    /// The cluster DNS addresses (kubelet's `--cluster-dns`); empty when this node has none.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// The node's own resolv.conf text (kubelet's `--resolv-conf`).
    pub host_resolv_conf: String,
}

/// A pod's resolv.conf and what had to give to produce it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// The file's contents.
    pub text: String,
    /// Limits exceeded or fallbacks taken, worded for a `DNSConfigForming` warning Event.
    pub warnings: Vec<String>,
}

/// Why no resolv.conf can be made for a pod (the API should have refused such a pod).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolvError {
    #[error("unknown dnsPolicy {0:?}")]
    UnknownPolicy(String),
    #[error("dnsPolicy None requires spec.dnsConfig with at least one nameserver")]
    NoneWithoutNameserver,
    #[error("spec.dnsConfig.nameservers has {0} entries; at most 3 are allowed")]
    TooManyNameservers(usize),
    #[error("spec.dnsConfig.nameservers[{index}]: {value:?} is not an IP address")]
    BadNameserver { index: usize, value: String },
    #[error("spec.dnsConfig.options[{0}] has no name")]
    OptionWithoutName(usize),
}

/// Builds the resolv.conf for `pod` (a core/v1 Pod as JSON).
pub fn resolv_conf(pod: &Value, cfg: &ResolvConfig) -> Result<ResolvConf, ResolvError> {
    let spec = pod.get("spec");
    let host_network = spec
        .and_then(|s| s.get("hostNetwork"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let policy = spec
        .and_then(|s| s.get("dnsPolicy"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .unwrap_or("ClusterFirst");
    let pod_config = PodDnsConfig::parse(spec.and_then(|s| s.get("dnsConfig")))?;
    let mut warnings = Vec::new();

    let kind = match policy {
        "None" => Kind::None,
        "ClusterFirstWithHostNet" => Kind::Cluster,
        "ClusterFirst" if !host_network => Kind::Cluster,
        "ClusterFirst" | "Default" => Kind::Host,
        other => return Err(ResolvError::UnknownPolicy(other.to_string())),
    };
    let kind = if kind == Kind::Cluster && cfg.cluster_dns.is_empty() {
        warnings.push(format!(
            "this node has no cluster DNS address and cannot give the pod {policy:?}; falling back to \"Default\""
        ));
        Kind::Host
    } else {
        kind
    };

    let host = HostResolv::parse(&cfg.host_resolv_conf);
    let mut conf = match kind {
        Kind::None => {
            if pod_config.nameservers.is_empty() {
                return Err(ResolvError::NoneWithoutNameserver);
            }
            HostResolv::default()
        }
        Kind::Cluster => HostResolv {
            nameservers: cfg.cluster_dns.iter().map(ToString::to_string).collect(),
            searches: cluster_searches(namespace_of(pod), &cfg.domain, host.searches),
            options: vec!["ndots:5".to_string()],
        },
        Kind::Host => host,
    };

    conf.nameservers = dedup(conf.nameservers.into_iter().chain(pod_config.nameservers));
    conf.searches = dedup(conf.searches.into_iter().chain(pod_config.searches));
    for option in pod_config.options {
        set_option(&mut conf.options, option);
    }

    if conf.nameservers.len() > MAX_NAMESERVERS {
        conf.nameservers.truncate(MAX_NAMESERVERS);
        warnings.push(format!(
            "nameserver limits were exceeded, some nameservers have been omitted, the applied nameserver line is: {}",
            conf.nameservers.join(" ")
        ));
    }
    if fit_searches(&mut conf.searches) {
        warnings.push(format!(
            "search line limits were exceeded, some search paths have been omitted, the applied search line is: {}",
            conf.searches.join(" ")
        ));
    }
    Ok(ResolvConf {
        text: conf.render(),
        warnings,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Cluster,
    Host,
    None,
}

fn namespace_of(pod: &Value) -> &str {
    pod.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

/// `<ns>.svc.<domain> svc.<domain> <domain>` then the node's own search domains.
fn cluster_searches(namespace: &str, domain: &str, host: Vec<String>) -> Vec<String> {
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() {
        return host;
    }
    let cluster = [
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    dedup(cluster.into_iter().chain(host))
}

/// Keeps the first of equal entries, in order.
fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// An option's name: `ndots` of `ndots:5`.
fn option_name(option: &str) -> &str {
    option.split(':').next().unwrap_or(option)
}

/// Sets `option` in place of one with the same name, or appends it.
fn set_option(options: &mut Vec<String>, option: String) {
    match options
        .iter_mut()
        .find(|o| option_name(o) == option_name(&option))
    {
        Some(existing) => *existing = option,
        None => options.push(option),
    }
}

/// Fits the search list to the limits kubelet enforces; true if anything was dropped.
/// Over-long domains go first, then the list is cut to 32, then the tail is cut until the line
/// fits in 2048 characters.
fn fit_searches(searches: &mut Vec<String>) -> bool {
    let before = searches.len();
    if searches.len() > MAX_SEARCH_DOMAINS {
        searches.truncate(MAX_SEARCH_DOMAINS);
    }
    searches.retain(|s| s.len() <= MAX_DOMAIN_CHARS);
    while !searches.is_empty() && line_len(searches) > MAX_SEARCH_CHARS {
        searches.pop();
    }
    searches.len() != before
}

/// The length of the domains joined by single spaces.
fn line_len(searches: &[String]) -> usize {
    searches.iter().map(String::len).sum::<usize>() + searches.len().saturating_sub(1)
}

/// A pod's `spec.dnsConfig`, checked as the API checks it.
#[derive(Debug, Default)]
struct PodDnsConfig {
    nameservers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl PodDnsConfig {
    fn parse(value: Option<&Value>) -> Result<PodDnsConfig, ResolvError> {
        let Some(value) = value else {
            return Ok(PodDnsConfig::default());
        };
        let strings = |key: &str| -> Vec<String> {
            value
                .get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let nameservers = strings("nameservers");
        if nameservers.len() > MAX_NAMESERVERS {
            return Err(ResolvError::TooManyNameservers(nameservers.len()));
        }
        if let Some((index, value)) = nameservers
            .iter()
            .enumerate()
            .find(|(_, ns)| ns.parse::<IpAddr>().is_err())
        {
            return Err(ResolvError::BadNameserver {
                index,
                value: value.clone(),
            });
        }
        let mut options = Vec::new();
        let items = value
            .get("options")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (index, item) in items.iter().enumerate() {
            let name = item.get("name").and_then(Value::as_str).unwrap_or("");
            if name.is_empty() {
                return Err(ResolvError::OptionWithoutName(index));
            }
            match item
                .get("value")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
            {
                Some(v) => options.push(format!("{name}:{v}")),
                None => options.push(name.to_string()),
            }
        }
        Ok(PodDnsConfig {
            nameservers,
            searches: strings("searches"),
            options,
        })
    }
}

/// The parts of a resolv.conf kubelet uses. Also the node's upstreams for the DNS server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct HostResolv {
    pub(crate) nameservers: Vec<String>,
    pub(crate) searches: Vec<String>,
    pub(crate) options: Vec<String>,
}

impl HostResolv {
    /// Reads `nameserver`, `search` and `options` lines as kubelet does: comment lines start
    /// with `#` or `;`, the last `search` line wins (trailing dots and a lone `.` dropped),
    /// options accumulate with later ones of the same name replacing earlier ones. `domain`
    /// lines are ignored, as kubelet ignores them.
    pub(crate) fn parse(text: &str) -> HostResolv {
        let mut conf = HostResolv::default();
        for line in text.lines() {
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => {
                    if let Some(ns) = fields.next() {
                        conf.nameservers.push(ns.to_string());
                    }
                }
                Some("search") => {
                    conf.searches = fields
                        .filter(|s| *s != ".")
                        .map(|s| s.trim_end_matches('.').to_string())
                        .collect();
                }
                Some("options") => {
                    for option in fields {
                        set_option(&mut conf.options, option.to_string());
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// The file as container runtimes write it: search, nameservers, options.
    fn render(&self) -> String {
        let mut text = String::new();
        if !self.searches.is_empty() {
            text.push_str("search ");
            text.push_str(&self.searches.join(" "));
            text.push('\n');
        }
        for ns in &self.nameservers {
            text.push_str("nameserver ");
            text.push_str(ns);
            text.push('\n');
        }
        if !self.options.is_empty() {
            text.push_str("options ");
            text.push_str(&self.options.join(" "));
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# generated by NetworkManager\n\
        ; another comment\n\
        domain lan\n\
        search old.example\n\
        search lan corp.example. .\n\
        nameserver 192.168.1.1\n\
        nameserver 1.1.1.1\n\
        options timeout:2 rotate\n\
        options timeout:3\n";

    fn cfg() -> ResolvConfig {
        ResolvConfig {
            cluster_dns: vec!["10.43.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
            host_resolv_conf: HOST.into(),
        }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec})
    }

    #[test]
    fn host_resolv_conf_is_read_as_kubelet_reads_it() {
        let host = HostResolv::parse(HOST);
        assert_eq!(host.nameservers, ["192.168.1.1", "1.1.1.1"]);
        assert_eq!(host.searches, ["lan", "corp.example"]);
        assert_eq!(host.options, ["timeout:3", "rotate"]);
    }

    #[test]
    fn cluster_first_is_the_default() {
        let conf = resolv_conf(&pod(json!({})), &cfg()).unwrap();
        assert_eq!(
            conf.text,
            "search team.svc.cluster.local svc.cluster.local cluster.local lan corp.example\n\
             nameserver 10.43.0.10\n\
             options ndots:5\n"
        );
        assert!(conf.warnings.is_empty());
        let explicit = resolv_conf(&pod(json!({"dnsPolicy": "ClusterFirst"})), &cfg()).unwrap();
        assert_eq!(explicit, conf);
    }

    #[test]
    fn host_network_with_cluster_first_gets_default() {
        let conf = resolv_conf(&pod(json!({"hostNetwork": true})), &cfg()).unwrap();
        assert_eq!(
            conf.text,
            "search lan corp.example\nnameserver 192.168.1.1\nnameserver 1.1.1.1\noptions timeout:3 rotate\n"
        );
    }

    #[test]
    fn cluster_first_with_host_net_keeps_cluster_dns() {
        let spec = json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        assert!(conf.text.contains("nameserver 10.43.0.10\n"));
        assert!(conf.text.starts_with("search team.svc.cluster.local "));
    }

    #[test]
    fn default_policy_copies_the_node() {
        let conf = resolv_conf(&pod(json!({"dnsPolicy": "Default"})), &cfg()).unwrap();
        assert_eq!(
            conf.text,
            "search lan corp.example\nnameserver 192.168.1.1\nnameserver 1.1.1.1\noptions timeout:3 rotate\n"
        );
    }

    #[test]
    fn none_policy_uses_only_dns_config() {
        let spec = json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["9.9.9.9"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        assert_eq!(
            conf.text,
            "search a.example\nnameserver 9.9.9.9\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn none_policy_without_nameservers_is_refused() {
        let missing = resolv_conf(&pod(json!({"dnsPolicy": "None"})), &cfg());
        assert_eq!(missing, Err(ResolvError::NoneWithoutNameserver));
        let empty = json!({"dnsPolicy": "None", "dnsConfig": {"searches": ["x"]}});
        assert_eq!(
            resolv_conf(&pod(empty), &cfg()),
            Err(ResolvError::NoneWithoutNameserver)
        );
    }

    #[test]
    fn dns_config_merges_into_cluster_first() {
        let spec = json!({"dnsConfig": {
            "nameservers": ["10.43.0.10", "8.8.8.8"],
            "searches": ["svc.cluster.local", "extra.example"],
            "options": [{"name": "ndots", "value": "1"}, {"name": "single-request-reopen"}]}});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        assert_eq!(
            conf.text,
            "search team.svc.cluster.local svc.cluster.local cluster.local lan corp.example extra.example\n\
             nameserver 10.43.0.10\n\
             nameserver 8.8.8.8\n\
             options ndots:1 single-request-reopen\n"
        );
    }

    #[test]
    fn merged_nameservers_beyond_three_are_trimmed_with_a_warning() {
        let spec =
            json!({"dnsPolicy": "Default", "dnsConfig": {"nameservers": ["8.8.8.8", "8.8.4.4"]}});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        assert_eq!(conf.text.matches("nameserver ").count(), 3);
        assert!(!conf.text.contains("8.8.4.4"));
        assert_eq!(conf.warnings.len(), 1);
        assert!(
            conf.warnings[0].contains("192.168.1.1 1.1.1.1 8.8.8.8"),
            "{:?}",
            conf.warnings
        );
    }

    #[test]
    fn pod_dns_config_breaking_api_rules_is_refused() {
        let four =
            json!({"dnsConfig": {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "8.8.4.4"]}});
        assert_eq!(
            resolv_conf(&pod(four), &cfg()),
            Err(ResolvError::TooManyNameservers(4))
        );
        let bad = json!({"dnsConfig": {"nameservers": ["dns.example"]}});
        assert_eq!(
            resolv_conf(&pod(bad), &cfg()),
            Err(ResolvError::BadNameserver {
                index: 0,
                value: "dns.example".into()
            })
        );
        let nameless = json!({"dnsConfig": {"options": [{"value": "1"}]}});
        assert_eq!(
            resolv_conf(&pod(nameless), &cfg()),
            Err(ResolvError::OptionWithoutName(0))
        );
        let policy = json!({"dnsPolicy": "Sometimes"});
        assert_eq!(
            resolv_conf(&pod(policy), &cfg()),
            Err(ResolvError::UnknownPolicy("Sometimes".into()))
        );
    }

    #[test]
    fn search_list_is_fitted_to_the_limits() {
        // 40 domains: cut to 32.
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let spec = json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": many}});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        let line = conf.text.lines().next().unwrap();
        assert_eq!(line.split(' ').count() - 1, 32);
        assert_eq!(conf.warnings.len(), 1);

        // Twenty 200-character domains: 4019 characters, cut from the tail to fit 2048.
        let long: Vec<String> = (0..20)
            .map(|i| format!("{i:02}{}", ".a".repeat(99)))
            .collect();
        let spec = json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": long}});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        let searches: Vec<&str> = conf.text.lines().next().unwrap()["search ".len()..]
            .split(' ')
            .collect();
        assert_eq!(searches.len(), 10);
        assert!(searches.join(" ").len() <= MAX_SEARCH_CHARS);
        assert!(searches[0].starts_with("00") && searches[9].starts_with("09"));

        // A domain longer than 253 characters is dropped outright.
        let huge = format!("x{}", ".y".repeat(130));
        let spec = json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": [huge, "ok.example"]}});
        let conf = resolv_conf(&pod(spec), &cfg()).unwrap();
        assert!(conf.text.starts_with("search ok.example\n"));
        assert_eq!(conf.warnings.len(), 1);
    }

    #[test]
    fn no_cluster_dns_falls_back_to_default_with_a_warning() {
        let cfg = ResolvConfig {
            cluster_dns: Vec::new(),
            ..cfg()
        };
        let conf = resolv_conf(&pod(json!({})), &cfg).unwrap();
        assert!(conf.text.contains("nameserver 192.168.1.1\n"));
        assert!(!conf.text.contains("svc.cluster.local"));
        assert_eq!(conf.warnings.len(), 1);
        assert!(conf.warnings[0].contains("falling back"));
    }

    #[test]
    fn empty_cluster_domain_keeps_only_the_node_search_path() {
        let cfg = ResolvConfig {
            domain: String::new(),
            ..cfg()
        };
        let conf = resolv_conf(&pod(json!({})), &cfg).unwrap();
        assert!(
            conf.text
                .starts_with("search lan corp.example\nnameserver 10.43.0.10\n")
        );
    }

    #[test]
    fn empty_host_resolv_conf_gives_an_empty_default() {
        let cfg = ResolvConfig {
            host_resolv_conf: String::new(),
            ..cfg()
        };
        let conf = resolv_conf(&pod(json!({"dnsPolicy": "Default"})), &cfg).unwrap();
        assert_eq!(conf.text, "");
    }
}
