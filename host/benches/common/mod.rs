//! What the benches share: the configuration of an in-process server as `kedge server` runs
//! it (durable store, the default plugins), listening on a free loopback port.

use std::path::PathBuf;

use kedge::plugins::PluginConfig;
use kedge::server::ServerConfig;

/// A server keeping its state in `data_dir`. Compiled plugins are cached under `target/`, so
/// only a bench's first run pays for their compilation.
pub fn server_config(data_dir: PathBuf) -> ServerConfig {
    ServerConfig {
        data_dir,
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_sans: vec![],
        plugin_cache_dir: Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-plugin-cache"),
        ),
        plugins: PluginConfig::default(),
        durable: true,
        registries: Default::default(),
        node_cert_validity: kedge_tunnel::server::DEFAULT_NODE_CERT_VALIDITY,
        // `KEDGE_BENCH_DATASTORE=http://127.0.0.1:2379`: the same bench on etcd.
        datastore: std::env::var("KEDGE_BENCH_DATASTORE")
            .ok()
            .filter(|e| !e.is_empty())
            .map(|e| kedge::store::etcd::Options::new(e.split(',').map(String::from).collect())),
        watch_history: None,
        replica_name: None,
        leader_election: Default::default(),
        server_token: None,
        join: None,
    }
}
