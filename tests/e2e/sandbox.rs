//! The plugin sandbox: a guest that loops forever and one that allocates without bound are
//! stopped by the host, which keeps serving, on baseline and on optimised code; more calls at
//! once than the instance pools hold wait their turn; a plugin writes only what it declared; a
//! watch by label selector routes events of the selected kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::api::ops::{Api, WriteOptions, system_clock};
use kedge::core::resources::by_kind;
use kedge::plugins::{Error, PluginConfig, PluginHost, Tier};
use kedge::store::redb::{Options, RedbStore};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SPIN: &[u8] = include_bytes!(concat!(
    env!("KEDGE_WASM_DIR"),
    "/kedge_fixture_plugin_spin.wasm"
));
const HOG: &[u8] = include_bytes!(concat!(
    env!("KEDGE_WASM_DIR"),
    "/kedge_fixture_plugin_hog.wasm"
));

fn host(dir: &std::path::Path) -> (Arc<Api>, Arc<PluginHost>, CancellationToken) {
    host_with(dir, true)
}

/// With `baseline` off, plugins run Cranelift's code from the start: the engine whose
/// instances come from pools.
fn host_with(
    dir: &std::path::Path,
    baseline: bool,
) -> (Arc<Api>, Arc<PluginHost>, CancellationToken) {
    let store = RedbStore::open(&dir.join("s.redb"), Options::default()).unwrap();
    let api = Arc::new(Api::new(Arc::new(store), system_clock()));
    api.create(
        by_kind("v1", "Namespace").unwrap(),
        "",
        json!({"metadata": {"name": "default"}}),
        &WriteOptions::default(),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let config = PluginConfig {
        call_deadline: Duration::from_millis(300),
        memory_limit: 32 << 20,
        cache_dir: None,
        baseline_compiler: baseline,
    };
    let host = Arc::new(PluginHost::new(api.clone(), config, cancel.clone()).unwrap());
    (api, host, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_guests_are_stopped_and_the_host_keeps_serving() {
    for baseline in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (api, host, cancel) = host_with(dir.path(), baseline);
        // Winch runs on x86-64 only; elsewhere every plugin is optimised from the start.
        let tier = if baseline && cfg!(target_arch = "x86_64") {
            Tier::Baseline
        } else {
            Tier::Optimized
        };

        // Built against the plain `controller` world: no `watches` export, no watches.
        let spin = host.load("spin", SPIN).await.unwrap();
        assert_eq!(spin.name(), "spin");
        assert_eq!(spin.tier(), tier);
        assert!(spin.permissions().watches.is_empty());
        let start = Instant::now();
        let err = host.reconcile(&spin, "default", "x").await.unwrap_err();
        let took = start.elapsed();
        match &err {
            Error::Trap { reason, .. } => assert!(reason.contains("deadline"), "{reason}"),
            other => panic!("expected a trap, got {other}"),
        }
        assert!(took < Duration::from_secs(3), "stopped after {took:?}");

        let hog = host.load("hog", HOG).await.unwrap();
        assert_eq!(hog.tier(), tier);
        for _ in 0..3 {
            let err = host.reconcile(&hog, "default", "x").await.unwrap_err();
            match &err {
                Error::Trap { reason, .. } => assert!(reason.contains("memory"), "{reason}"),
                other => panic!("expected a trap, got {other}"),
            }
        }

        // The host still serves: the API answers and a well-behaved plugin reconciles.
        let ns = by_kind("v1", "Namespace").unwrap();
        assert!(api.get(ns, "", "default").is_ok());
        let rs = host
            .load("replicaset", kedge::server::default_plugins::REPLICASET)
            .await
            .unwrap();
        assert_eq!(rs.name(), "replicaset");
        host.reconcile(&rs, "default", "absent").await.unwrap();
        // And the runaway ones can be called again (each call gets a fresh instance).
        assert!(host.reconcile(&spin, "default", "y").await.is_err());
        cancel.cancel();
    }
}

/// A plugin host whose runtime goes away without anyone cancelling it (an embedder or a
/// test dropping everything) is freed with its guest runtime, instance pools and plugins:
/// the worker on the guest runtime, which holds the host, stops too.
#[test]
fn a_host_dropped_with_its_runtime_uncancelled_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let host = rt.block_on(async {
        let (_api, host, _cancel) = host_with(dir.path(), false);
        let rs = host
            .load("replicaset", kedge::server::default_plugins::REPLICASET)
            .await
            .unwrap();
        host.start(rs);
        // The worker is running (it reconciles what exists: nothing here).
        tokio::time::sleep(Duration::from_millis(200)).await;
        Arc::downgrade(&host)
    });
    drop(rt);
    let start = Instant::now();
    while host.upgrade().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the plugin host outlived its runtime"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host keeps instances for `CALL_SLOTS` (128) calls at once in its pools; more calls at
/// once wait for a slot rather than fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_calls_at_once_than_the_pools_hold_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (_api, host, cancel) = host_with(dir.path(), false);
    let spin = host.load("spin", SPIN).await.unwrap();
    assert_eq!(spin.tier(), Tier::Optimized);
    let start = Instant::now();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let (host, spin) = (host.clone(), spin.clone());
            tokio::spawn(async move { host.reconcile(&spin, "default", &format!("k{i}")).await })
        })
        .collect();
    for call in calls {
        match call.await.unwrap() {
            // Every call ran its course: stopped at its 300 ms deadline.
            Err(Error::Trap { reason, .. }) => assert!(reason.contains("deadline"), "{reason}"),
            other => panic!("expected a deadline trap, got {other:?}"),
        }
    }
    // Two rounds of deadlines at least: the calls past the first 128 waited.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_writes_only_what_it_declared() {
    let dir = tempfile::tempdir().unwrap();
    let (api, host, cancel) = host(dir.path());
    let rs = host
        .load("replicaset", kedge::server::default_plugins::REPLICASET)
        .await
        .unwrap();
    let perms = rs.permissions();
    assert_eq!(perms.for_kind.unwrap().kind, "ReplicaSet");
    assert!(perms.writable.iter().any(|r| r.kind == "Pod"));
    assert!(!perms.writable.iter().any(|r| r.kind == "Node"));
    let res = by_kind("apps/v1", "ReplicaSet").unwrap();
    let rs_json = |name: &str, replicas: u32| {
        json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "x:1"}]}}}})
    };
    // Regression: an object that exists before the plugin starts is reconciled too (its
    // informer may have published it before the plugin subscribed).
    api.create(
        res,
        "default",
        rs_json("early", 1),
        &WriteOptions::default(),
    )
    .unwrap();
    // Drive real reconciles through the informer cache and work queue.
    host.start(rs);
    api.create(res, "default", rs_json("web", 2), &WriteOptions::default())
        .unwrap();
    let pods = by_kind("v1", "Pod").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = api.list(pods, "default", &Default::default()).unwrap();
        let n = list["items"].as_array().unwrap().len();
        if n == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "replicaset plugin made {n} pods");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Converged: no more pods appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let list = api.list(pods, "default", &Default::default()).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert_eq!(
        list["items"][0]["metadata"]["ownerReferences"][0]["kind"],
        "ReplicaSet"
    );
    cancel.cancel();
}

/// Polls `check` every 50 ms until it holds, for at most 20 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_by_selector_follows_pods_into_and_out_of_a_service() {
    use kedge::core::patch::PatchType;
    use kedge::plugins::WatchBy;

    let dir = tempfile::tempdir().unwrap();
    let (api, host, cancel) = host(dir.path());
    let ep = host
        .load("endpoints", kedge::server::default_plugins::ENDPOINTS)
        .await
        .unwrap();
    // The plugin's `watches`, validated: pods by the Service's selector, Endpoints by name.
    let watches: Vec<_> = ep
        .permissions()
        .watches
        .iter()
        .map(|w| (w.kind.kind, w.by.clone()))
        .collect();
    assert_eq!(
        watches,
        [
            ("Pod", WatchBy::SelectorMap("/spec/selector".into())),
            ("Endpoints", WatchBy::SameName),
        ]
    );
    host.start(ep);

    let (services, pods, endpoints) = (
        by_kind("v1", "Service").unwrap(),
        by_kind("v1", "Pod").unwrap(),
        by_kind("v1", "Endpoints").unwrap(),
    );
    let opts = WriteOptions::default();
    api.create(
        services,
        "default",
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": 8080}]}}),
        &opts,
    )
    .unwrap();
    let ips = |api: &Api| -> Vec<String> {
        let Ok(ep) = api.get(endpoints, "default", "web") else {
            return vec![];
        };
        let mut ips: Vec<String> = ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| {
                let ready = s["addresses"].as_array().into_iter().flatten();
                ready.chain(s["notReadyAddresses"].as_array().into_iter().flatten())
            })
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect();
        ips.sort();
        ips
    };
    // A pod appears and gets an address: only the pod's events can tell the Service (no
    // resync), through the watch.
    for (name, ip) in [("a", "10.1.0.1"), ("b", "10.1.0.2")] {
        api.create(
            pods,
            "default",
            json!({"metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x:1"}]}}),
            &opts,
        )
        .unwrap();
        api.patch(
            pods,
            "default",
            name,
            Some("status"),
            &json!({"status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}),
            PatchType::Merge,
            &opts,
        )
        .unwrap();
    }
    eventually("both pods in the Endpoints", || {
        ips(&api) == ["10.1.0.1", "10.1.0.2"]
    })
    .await;
    // Relabelled out of the selector: the pod now matches nothing, so only its labels before
    // the change lead to the Service.
    api.patch(
        pods,
        "default",
        "a",
        None,
        &json!({"metadata": {"labels": {"app": "other"}}}),
        PatchType::Merge,
        &opts,
    )
    .unwrap();
    eventually("the relabelled pod out of the Endpoints", || {
        ips(&api) == ["10.1.0.2"]
    })
    .await;
    // A managed Endpoints edited by hand is put back (watched by name).
    api.patch(
        endpoints,
        "default",
        "web",
        None,
        &json!({"subsets": null}),
        PatchType::Merge,
        &opts,
    )
    .unwrap();
    eventually("the Endpoints restored", || ips(&api) == ["10.1.0.2"]).await;
    // Its slice, deleted by hand, is put back (the slices are owned).
    let slices = by_kind("discovery.k8s.io/v1", "EndpointSlice").unwrap();
    let slice_of_web = |api: &Api| {
        let list = api.list(slices, "default", &Default::default()).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
    };
    let name = slice_of_web(&api).expect("a slice for web");
    api.delete(slices, "default", &name, &Default::default())
        .unwrap();
    eventually("the slice back", || slice_of_web(&api).is_some()).await;
    // An Endpoints whose Service does not exist (yet) is left alone.
    api.create(
        endpoints,
        "default",
        json!({"metadata": {"name": "external"},
            "subsets": [{"addresses": [{"ip": "192.0.2.7"}], "ports": [{"port": 443}]}]}),
        &opts,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(api.get(endpoints, "default", "external").is_ok());
    cancel.cancel();
}
