//! `emit-events`: a plugin's Events are queued and written after the call returns, within a
//! bounded queue per plugin; what does not fit is dropped and said so, and a call the plugin
//! may not make queues nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge_api::Api;
use kedge_api::ops::{WriteOptions, system_clock};
use kedge_core::resources;
use serde_json::json;

use crate::wit_host::kedge::plugin::cluster::Host as _;
use crate::wit_host::{HostState, KindRef, Registration, WitApiError};

fn host(api: &Arc<Api>, writes: Vec<KindRef>) -> HostState {
    let reg = Registration {
        name: "sched".into(),
        for_kind: KindRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
        },
        owns: vec![],
        reads: vec![],
        writes,
    };
    HostState::for_test(api, &reg)
}

fn event(name: &str) -> (String, String) {
    let body = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "Scheduled", "message": "assigned", "type": "Normal"});
    ("default".into(), body.to_string())
}

fn stored_events(api: &Api) -> usize {
    let events = resources::by_kind("v1", "Event").unwrap();
    let list = api
        .list(events, "default", &kedge_api::ops::ListOptions::default())
        .unwrap();
    list["items"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_written_after_the_call_and_what_does_not_fit_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        kedge_store::redb::RedbStore::open(&dir.path().join("s"), Default::default()).unwrap();
    let api = Arc::new(Api::new(Arc::new(store), system_clock()));
    let ns = resources::by_kind("v1", "Namespace").unwrap();
    api.create(
        ns,
        "",
        json!({"metadata": {"name": "default"}}),
        &WriteOptions::default(),
    )
    .unwrap();
    let events = vec![KindRef {
        api_version: "v1".into(),
        kind: "Event".into(),
    }];

    // Queued, then written in the background; the room comes back after the writes.
    let mut h = host(&api, events.clone());
    let items: Vec<_> = (0..20).map(|i| event(&format!("e{i}"))).collect();
    assert!(matches!(h.emit_events(items), Ok(20)));
    let began = Instant::now();
    while stored_events(&api) < 20 || h.plugin.events.queued_for_test() > 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "not written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A full queue: only what fits is queued; the room comes back once they are written.
    let full = super::wit_host::EVENT_QUEUE - 1;
    h.plugin.events.reserve_for_test(full);
    let items: Vec<_> = (0..3).map(|i| event(&format!("late{i}"))).collect();
    assert!(matches!(h.emit_events(items), Ok(1)));
    h.plugin.events.release_for_test(full);
    let began = Instant::now();
    while stored_events(&api) < 21 || h.plugin.events.queued_for_test() > 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "not written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(h.emit_events(vec![event("again")]), Ok(1)));

    // Refused as a whole, nothing queued: a body that is not JSON, too many at once, a
    // plugin that may not write Events.
    let bad = vec![event("fine"), ("default".into(), "{not json".into())];
    assert!(matches!(h.emit_events(bad), Err(WitApiError::Invalid(_))));
    let many: Vec<_> = (0..513).map(|i| event(&format!("m{i}"))).collect();
    assert!(matches!(h.emit_events(many), Err(WitApiError::Invalid(_))));
    let mut denied = host(&api, vec![]);
    assert!(matches!(
        denied.emit_events(vec![event("no")]),
        Err(WitApiError::Forbidden(_))
    ));
    let began = Instant::now();
    while h.plugin.events.queued_for_test() > 0 {
        assert!(began.elapsed() < Duration::from_secs(10), "not written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(denied.plugin.events.queued_for_test(), 0);
    assert_eq!(stored_events(&api), 22, "only what was queued is written");
}
