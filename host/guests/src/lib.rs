//! The Wasm guests kedge embeds, built for wasm32-wasip2 by this crate's build script: the
//! default plugin set the server installs, and the sample app every node can run without a
//! registry. Only the crates that embed them depend on this one, so a change to a guest
//! rebuilds the server and the agent, not the API or the plugin host.

/// The sample Wasm app (`samples/hello-wasm`).
pub const HELLO_WASM: &[u8] = include_bytes!(concat!(env!("KEDGE_WASM_DIR"), "/hello-wasm.wasm"));

/// The built-in controllers and scheduler, by their `spec.source.builtin` names.
pub mod default_plugins {
    pub const SCHEDULER: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_scheduler.wasm"
    ));
    pub const REPLICASET: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_replicaset.wasm"
    ));
    pub(crate) const REPLICATIONCONTROLLER: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_replicationcontroller.wasm"
    ));
    pub(crate) const DEPLOYMENT: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_deployment.wasm"
    ));
    pub(crate) const JOB: &[u8] =
        include_bytes!(concat!(env!("KEDGE_WASM_DIR"), "/kedge_plugin_job.wasm"));
    pub(crate) const CRONJOB: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_cronjob.wasm"
    ));
    pub(crate) const DAEMONSET: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_daemonset.wasm"
    ));
    pub(crate) const STATEFULSET: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_statefulset.wasm"
    ));

    pub(crate) const NODE_LIFECYCLE: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_nodelifecycle.wasm"
    ));
    pub const ENDPOINTS: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_endpoints.wasm"
    ));
    pub(crate) const GARBAGE_COLLECTOR: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_garbagecollector.wasm"
    ));
    pub(crate) const SERVICE_ACCOUNT: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_serviceaccount.wasm"
    ));
    pub const NAMESPACE: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_namespace.wasm"
    ));

    pub(crate) const DISRUPTION: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_disruption.wasm"
    ));

    pub(crate) const LOCAL_PATH: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_localpath.wasm"
    ));

    pub(crate) const SERVICE_LB: &[u8] = include_bytes!(concat!(
        env!("KEDGE_WASM_DIR"),
        "/kedge_plugin_servicelb.wasm"
    ));

    pub(crate) const HPA: &[u8] =
        include_bytes!(concat!(env!("KEDGE_WASM_DIR"), "/kedge_plugin_hpa.wasm"));

    pub const ALL: &[(&str, &[u8])] = &[
        ("scheduler", SCHEDULER),
        ("replicaset", REPLICASET),
        ("replicationcontroller", REPLICATIONCONTROLLER),
        ("deployment", DEPLOYMENT),
        ("job", JOB),
        ("cronjob", CRONJOB),
        ("daemonset", DAEMONSET),
        ("statefulset", STATEFULSET),
        ("nodelifecycle", NODE_LIFECYCLE),
        ("endpoints", ENDPOINTS),
        ("garbagecollector", GARBAGE_COLLECTOR),
        ("serviceaccount", SERVICE_ACCOUNT),
        ("namespace", NAMESPACE),
        ("disruption", DISRUPTION),
        ("localpath", LOCAL_PATH),
        ("servicelb", SERVICE_LB),
        ("hpa", HPA),
    ];
}
