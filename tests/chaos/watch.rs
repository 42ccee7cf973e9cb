//! Campaign 3, watch correctness (the etcd bug list is the anchor: watches going back in
//! time, events dropped or duplicated around compaction and restarts). One writer makes a
//! known history of creates, updates and deletes; many watchers behave like client-go's
//! reflector — watch from a resourceVersion, resume from the last one seen when the stream
//! breaks, relist on 410 Gone — and now and then start over from a random resourceVersion of
//! the past, as a new client would. The server is killed with SIGKILL between bursts and keeps
//! a short watch history (`--watch-history`), so resumes hit compaction.
//!
//! Afterwards every stream is checked against the history: from its starting
//! resourceVersion it must be exactly the history's next events, in order (no gap, no
//! duplicate, no reordering, values and resourceVersions equal), or a 410; every relist must
//! be exactly the state at its resourceVersion; resourceVersions seen by one client never go
//! down.
//!
//! Short form (CI): 3 rounds, 16 watchers. Long form: `KEDGE_CHAOS_ROUNDS=100
//! KEDGE_CHAOS_WATCHERS=100` (`make chaos`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kedge::kubeclient::KubeClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::server::{ChaosServer, call, knob, rv_of, seed};

const NS: &str = "watch";
const KEYS: usize = 24;
/// Events the server's watch log keeps: small, so resumes from a few rounds back are 410s.
const HISTORY: &str = "400";
const SELECTOR: &str = "chaos%3Dwatch";

/// One event as the history has it and as a watcher received it.
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    kind: String,
    name: String,
    value: u64,
    /// `None` only for a delete in flight at a kill that turned out applied: its revision is
    /// learned from the watchers that saw it.
    rv: Option<u64>,
}

fn ev_of(kind: &str, obj: &Value) -> Result<Ev, String> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("event object without a name: {obj}"))?;
    let value = obj
        .pointer("/data/value")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("event object without data.value: {obj}"))?;
    Ok(Ev {
        kind: kind.to_string(),
        name: name.to_string(),
        value,
        rv: Some(rv_of(obj)),
    })
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq)]
enum End {
    /// The connection broke or closed (the server was killed, or the run ended).
    Closed,
    /// 410 Gone: the starting resourceVersion was compacted away.
    Gone,
}

/// What one watcher did, in order.
#[derive(Debug)]
enum Step {
    /// A watch from `from`: the events it delivered and how it ended.
    Watch {
        from: u64,
        events: Vec<Ev>,
        end: End,
    },
    /// A relist after a 410: the objects at `rv`.
    List {
        rv: u64,
        items: BTreeMap<String, (u64, u64)>,
    },
    /// A new life: the watcher forgot everything and starts from an older resourceVersion.
    Restart,
}

fn object(key: &str, value: u64, rv: Option<u64>) -> Value {
    let mut meta = json!({"name": key, "namespace": NS, "labels": {"chaos": "watch"}});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
        "data": {"value": value.to_string()}})
}

/// The writer's view: the history so far and what is stored now.
#[derive(Default)]
struct History {
    events: Vec<Ev>,
    /// key → (value, rv) of what is stored.
    state: BTreeMap<String, (u64, u64)>,
    /// A write sent without an answer when the server died.
    inflight: Option<(String, Ev)>,
}

/// Writes until `stop` or until the server stops answering.
async fn write_burst(
    client: &KubeClient,
    history: &Mutex<History>,
    known_rvs: &Mutex<Vec<u64>>,
    rng: &mut StdRng,
    next_value: &mut u64,
    stop: &AtomicBool,
) {
    let Ok(mut conn) = client.connect().await else {
        return;
    };
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", rng.random_range(0..KEYS));
        *next_value += 1;
        let value = *next_value;
        let current = history.lock().unwrap().state.get(&key).copied();
        let (kind, reply) = match current {
            None => {
                history.lock().unwrap().inflight = Some((
                    key.clone(),
                    Ev {
                        kind: "ADDED".into(),
                        name: key.clone(),
                        value,
                        rv: None,
                    },
                ));
                let body = object(&key, value, None);
                (
                    "ADDED",
                    call(&mut conn, http::Method::POST, &base, Some(&body)).await,
                )
            }
            Some((_, rv)) if rng.random_bool(0.8) => {
                history.lock().unwrap().inflight = Some((
                    key.clone(),
                    Ev {
                        kind: "MODIFIED".into(),
                        name: key.clone(),
                        value,
                        rv: None,
                    },
                ));
                let body = object(&key, value, Some(rv));
                let path = format!("{base}/{key}");
                (
                    "MODIFIED",
                    call(&mut conn, http::Method::PUT, &path, Some(&body)).await,
                )
            }
            Some((old, rv)) => {
                history.lock().unwrap().inflight = Some((
                    key.clone(),
                    Ev {
                        kind: "DELETED".into(),
                        name: key.clone(),
                        value: old,
                        rv: None,
                    },
                ));
                let body = json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "preconditions": {"resourceVersion": rv.to_string()}});
                let path = format!("{base}/{key}");
                (
                    "DELETED",
                    call(&mut conn, http::Method::DELETE, &path, Some(&body)).await,
                )
            }
        };
        let Some((code, body)) = reply else { return };
        assert!(
            code == 200 || code == 201,
            "{kind} {key}: {code} {body} (the only writer knew its state)"
        );
        let mut h = history.lock().unwrap();
        let (_, mut ev) = h.inflight.take().unwrap();
        // A delete answers with the object as it was deleted: its resourceVersion is the
        // deletion's revision.
        let rv = rv_of(&body);
        ev.rv = Some(rv);
        if kind == "DELETED" {
            h.state.remove(&key);
        } else {
            h.state.insert(key.clone(), (value, rv));
        }
        h.events.push(ev);
        known_rvs.lock().unwrap().push(rv);
    }
}

/// After a restart: did the write in flight at the kill happen? (A single writer, so the
/// key's state tells.)
async fn resolve_inflight(client: &KubeClient, history: &Mutex<History>) {
    let Some((key, ev)) = history.lock().unwrap().inflight.take() else {
        return;
    };
    let (code, body) = client
        .request(
            http::Method::GET,
            &format!("/api/v1/namespaces/{NS}/configmaps/{key}"),
            "",
            None,
        )
        .await
        .unwrap();
    let mut h = history.lock().unwrap();
    let stored = (code == 200).then(|| {
        let v: u64 = body["data"]["value"].as_str().unwrap().parse().unwrap();
        (v, rv_of(&body))
    });
    match (ev.kind.as_str(), stored) {
        ("DELETED", None) => {
            h.state.remove(&key);
            h.events.push(ev);
        }
        ("ADDED" | "MODIFIED", Some((v, rv))) if v == ev.value => {
            h.state.insert(key, (v, rv));
            h.events.push(Ev { rv: Some(rv), ..ev });
        }
        // Not applied: the store must still hold what it held.
        (_, stored) => assert_eq!(
            stored,
            h.state.get(&key).copied(),
            "{key}: after the restart the store holds neither the state before the lost write nor after it"
        ),
    }
}

/// Reads one watch stream until it ends, `stop` is set and it caught up to `last`, or the
/// connection breaks.
async fn watch_once(
    client: &KubeClient,
    from: u64,
    until: Instant,
    stop: &AtomicBool,
    last: &AtomicU64,
    anomalies: &Mutex<Vec<String>>,
) -> Option<(Vec<Ev>, End, Vec<u64>)> {
    let mut conn = client.connect().await.ok()?;
    let path = format!(
        "/api/v1/namespaces/{NS}/configmaps?watch=true&resourceVersion={from}&labelSelector={SELECTOR}&allowWatchBookmarks=true"
    );
    let resp = conn.send(http::Method::GET, &path, "", None).await.ok()?;
    if resp.status() == 410 {
        return Some((Vec::new(), End::Gone, Vec::new()));
    }
    if resp.status() != 200 {
        anomalies
            .lock()
            .unwrap()
            .push(format!("watch from {from}: HTTP {}", resp.status()));
        return None;
    }
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    let mut bookmarks = Vec::new();
    loop {
        let caught_up = events
            .last()
            .and_then(|e: &Ev| e.rv)
            .is_some_and(|rv| rv >= last.load(Ordering::Relaxed));
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && (caught_up || last.load(Ordering::Relaxed) <= from)
            || !stopping && Instant::now() > until
        {
            return Some((events, End::Closed, bookmarks));
        }
        let frame = match tokio::time::timeout(Duration::from_millis(200), body.frame()).await {
            Err(_) => continue,
            Ok(Some(Ok(f))) => f,
            Ok(_) => return Some((events, End::Closed, bookmarks)),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let ev: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(e) => {
                    anomalies
                        .lock()
                        .unwrap()
                        .push(format!("watch from {from}: undecodable line: {e}"));
                    return None;
                }
            };
            match ev["type"].as_str().unwrap_or_default() {
                "BOOKMARK" => bookmarks.push(rv_of(&ev["object"])),
                "ERROR" if ev["object"]["code"] == 410 => {
                    return Some((events, End::Gone, bookmarks));
                }
                kind @ ("ADDED" | "MODIFIED" | "DELETED") => match ev_of(kind, &ev["object"]) {
                    Ok(e) => events.push(e),
                    Err(e) => {
                        anomalies.lock().unwrap().push(e);
                        return None;
                    }
                },
                other => {
                    anomalies
                        .lock()
                        .unwrap()
                        .push(format!("watch from {from}: unexpected event {other}: {ev}"));
                    return None;
                }
            }
        }
    }
}

/// A reflector-like watcher; returns what it did.
#[allow(clippy::too_many_arguments)]
async fn watcher(
    kubeconfig: std::path::PathBuf,
    known_rvs: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    last: Arc<AtomicU64>,
    anomalies: Arc<Mutex<Vec<String>>>,
    mut rng: StdRng,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let pick = |rng: &mut StdRng| {
        let rvs = known_rvs.lock().unwrap();
        rvs[rng.random_range(0..rvs.len())]
    };
    let mut from = pick(&mut rng);
    // resourceVersions seen in this life, in order; they must never go down.
    let mut seen = from;
    loop {
        if stop.load(Ordering::Relaxed) && last.load(Ordering::Relaxed) <= from {
            return steps;
        }
        let Ok(client) = KubeClient::from_kubeconfig(&kubeconfig) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Clients hang up too: a stream lives 0.1–2 s unless the server dies first.
        let until = Instant::now() + Duration::from_millis(rng.random_range(100..2000));
        let Some((events, end, bookmarks)) =
            watch_once(&client, from, until, &stop, &last, &anomalies).await
        else {
            // Not connected (the server is down): try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stop.load(Ordering::Relaxed) {
                return steps;
            }
            continue;
        };
        for rv in events.iter().filter_map(|e| e.rv).chain(bookmarks) {
            if rv < seen {
                anomalies.lock().unwrap().push(format!(
                    "a watch from {from} went back in time: {rv} after {seen}"
                ));
            }
            seen = seen.max(rv);
        }
        let started = from;
        if let Some(rv) = events.last().and_then(|e| e.rv) {
            from = rv;
        }
        let gone = end == End::Gone;
        steps.push(Step::Watch {
            from: started,
            events,
            end,
        });
        if stop.load(Ordering::Relaxed) && !gone {
            continue;
        }
        if gone {
            // Relist, as a reflector does, and watch on from the list.
            let Ok((200, list)) = client
                .request(
                    http::Method::GET,
                    &format!("/api/v1/namespaces/{NS}/configmaps?labelSelector={SELECTOR}"),
                    "",
                    None,
                )
                .await
            else {
                continue;
            };
            let rv = rv_of(&list);
            if rv < seen {
                anomalies
                    .lock()
                    .unwrap()
                    .push(format!("a relist went back in time: {rv} after {seen}"));
            }
            let items = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    let e = ev_of("ADDED", o).unwrap();
                    (e.name, (e.value, e.rv.unwrap()))
                })
                .collect();
            steps.push(Step::List { rv, items });
            from = rv;
            seen = rv;
        } else if rng.random_bool(0.25) && !stop.load(Ordering::Relaxed) {
            steps.push(Step::Restart);
            from = pick(&mut rng);
            seen = from;
        }
    }
}

/// The last known resourceVersion before index `i` of the history (0 when none).
fn known_before(history: &[Ev], i: usize) -> u64 {
    history[..i].iter().rev().find_map(|e| e.rv).unwrap_or(0)
}

/// Whether history event `i` lies after resourceVersion `from`. A delete whose revision
/// nobody learned (no watcher received it) counts as after `from` only when it surely is.
fn after(history: &[Ev], i: usize, from: u64) -> bool {
    match history[i].rv {
        Some(rv) => rv > from,
        None => known_before(history, i) >= from,
    }
}

/// The stored state at `rv` as the history says.
fn state_at(history: &[Ev], rv: u64) -> BTreeMap<String, (u64, u64)> {
    let mut state = BTreeMap::new();
    for (i, e) in history.iter().enumerate() {
        if after(history, i, rv) {
            break;
        }
        if e.kind == "DELETED" {
            state.remove(&e.name);
        } else {
            state.insert(e.name.clone(), (e.value, e.rv.unwrap()));
        }
    }
    state
}

#[derive(Default, Debug)]
struct Figures {
    streams: usize,
    events: usize,
    gone: usize,
    relists: usize,
    lives: usize,
}

/// Checks every watcher's steps against the history; returns the figures and the anomalies.
fn check(history: &mut [Ev], watchers: &[Vec<Step>]) -> (Figures, Vec<String>) {
    let mut anomalies = Vec::new();
    // Learn the revisions of deletes that were in flight at a kill from the watchers that
    // received them.
    for i in 0..history.len() {
        if history[i].rv.is_some() {
            continue;
        }
        let lo = known_before(history, i);
        let hi = history[i + 1..]
            .iter()
            .find_map(|e| e.rv)
            .unwrap_or(u64::MAX);
        let mut seen: Vec<u64> = watchers
            .iter()
            .flatten()
            .filter_map(|s| match s {
                Step::Watch { events, .. } => Some(events),
                _ => None,
            })
            .flatten()
            .filter(|e| {
                e.kind == "DELETED"
                    && e.name == history[i].name
                    && e.value == history[i].value
                    && e.rv.is_some_and(|rv| lo < rv && rv < hi)
            })
            .filter_map(|e| e.rv)
            .collect();
        seen.sort();
        seen.dedup();
        match seen.as_slice() {
            [] => {}
            [rv] => history[i].rv = Some(*rv),
            many => anomalies.push(format!(
                "watchers disagree on the revision of the delete of {}: {many:?}",
                history[i].name
            )),
        }
    }
    let mut f = Figures::default();
    for (w, steps) in watchers.iter().enumerate() {
        f.lives += 1;
        for step in steps {
            match step {
                Step::Restart => f.lives += 1,
                Step::List { rv, items } => {
                    f.relists += 1;
                    let want = state_at(history, *rv);
                    if &want != items {
                        anomalies.push(format!(
                            "watcher {w}: the relist at {rv} holds {items:?}, the history says {want:?}"
                        ));
                    }
                }
                Step::Watch { from, events, end } => {
                    f.streams += 1;
                    f.events += events.len();
                    if *end == End::Gone {
                        f.gone += 1;
                    }
                    let start = (0..history.len())
                        .find(|&i| after(history, i, *from))
                        .unwrap_or(history.len());
                    let want = &history[start..];
                    for (j, got) in events.iter().enumerate() {
                        let same = |e: &Ev| {
                            e.kind == got.kind
                                && e.name == got.name
                                && e.value == got.value
                                && (e.rv.is_none() || e.rv == got.rv)
                        };
                        if want.get(j).is_some_and(same) {
                            continue;
                        }
                        let what = if j > 0 && same(&want[j - 1]) {
                            "a duplicate".to_string()
                        } else if let Some(k) = want.iter().skip(j + 1).position(same) {
                            format!("a gap of {} event(s)", k + 1)
                        } else if j >= want.len() {
                            "an event the history does not have".to_string()
                        } else {
                            "a wrong event".to_string()
                        };
                        anomalies.push(format!(
                            "watcher {w}: the watch from {from}, event #{j}: {what}: got {got:?}, expected {:?}",
                            want.get(j)
                        ));
                        break;
                    }
                }
            }
        }
    }
    (f, anomalies)
}

/// The writer's own state, moved into each burst's task and back.
struct Writer {
    rng: StdRng,
    next_value: u64,
}

#[test]
fn watchers_see_exactly_the_history_across_restarts_and_compaction() {
    let _serial = crate::server::one_at_a_time();
    let rounds = knob("KEDGE_CHAOS_ROUNDS", 3);
    let n_watchers = knob("KEDGE_CHAOS_WATCHERS", 16) as usize;
    let mut rng = StdRng::seed_from_u64(seed("watch"));
    let began = Instant::now();
    let mut server = ChaosServer::start(&["--watch-history", HISTORY]);
    let kubeconfig = server.dir.path().join("server/admin.kubeconfig");
    let rt = crate::server::runtime();
    rt.block_on(server.namespace(NS));

    let history: Arc<Mutex<History>> = Arc::default();
    let known_rvs: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let anomalies: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writer = Writer {
        rng: StdRng::seed_from_u64(rng.random()),
        next_value: 0,
    };
    // One burst of writes: until `ms` pass, then the server is killed (or, the last time,
    // the writer stops).
    let burst = |server: &mut ChaosServer, writer: Writer, ms: u64, kill: bool| -> Writer {
        let client = KubeClient::from_kubeconfig(&kubeconfig).unwrap();
        let (history, known_rvs) = (history.clone(), known_rvs.clone());
        let halt = Arc::new(AtomicBool::new(false));
        let task = {
            let halt = halt.clone();
            rt.spawn(async move {
                let mut w = writer;
                write_burst(
                    &client,
                    &history,
                    &known_rvs,
                    &mut w.rng,
                    &mut w.next_value,
                    &halt,
                )
                .await;
                w
            })
        };
        std::thread::sleep(Duration::from_millis(ms));
        if kill {
            server.crash();
        } else {
            halt.store(true, Ordering::Relaxed);
        }
        rt.block_on(task).unwrap()
    };
    writer = burst(&mut server, writer, 300, false);
    let watchers: Vec<_> = (0..n_watchers)
        .map(|_| {
            rt.spawn(watcher(
                kubeconfig.clone(),
                known_rvs.clone(),
                stop.clone(),
                last.clone(),
                anomalies.clone(),
                StdRng::seed_from_u64(rng.random()),
            ))
        })
        .collect();
    for _ in 0..rounds {
        let ms = rng.random_range(300..1500);
        writer = burst(&mut server, writer, ms, true);
        server.restart();
        rt.block_on(resolve_inflight(server.client(), &history));
    }
    // A last burst without a kill, so the history ends with a known revision.
    let _ = burst(&mut server, writer, 500, false);
    let final_rv = *known_rvs.lock().unwrap().last().unwrap();
    last.store(final_rv, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let steps: Vec<Vec<Step>> = watchers
        .into_iter()
        .enumerate()
        .map(|(w, t)| {
            match rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), t).await }) {
                Ok(steps) => steps.expect("watcher task"),
                Err(_) => {
                    anomalies.lock().unwrap().push(format!(
                        "watcher {w} did not reach the end of the history ({final_rv}) within 30 s"
                    ));
                    Vec::new()
                }
            }
        })
        .collect();
    server.crash();
    let mut events = std::mem::take(&mut history.lock().unwrap().events);
    let (f, found) = check(&mut events, &steps);
    let mut all = anomalies.lock().unwrap().clone();
    all.extend(found);
    assert!(
        all.is_empty(),
        "watch campaign: {} anomalies:\n{}",
        all.len(),
        all.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        f.events > 0 && f.streams > n_watchers,
        "the watchers saw nothing: {f:?}"
    );
    println!(
        "watch: {rounds} SIGKILL restarts in {:.0} s, history of {} events (server keeps {HISTORY}); \
         {n_watchers} watchers in {} lives: {} streams delivered {} events, {} ended in 410 Gone, \
         {} relists; 0 gaps, 0 duplicates, 0 reorderings, resourceVersions never went down",
        began.elapsed().as_secs_f64(),
        events.len(),
        f.lives,
        f.streams,
        f.events,
        f.gone,
        f.relists,
    );
}

/// The check itself, on made-up histories: it must catch what it is there to catch.
#[test]
fn the_check_catches_gaps_duplicates_phantoms_and_wrong_relists() {
    let ev = |kind: &str, name: &str, value: u64, rv: Option<u64>| Ev {
        kind: kind.into(),
        name: name.into(),
        value,
        rv,
    };
    let history = vec![
        ev("ADDED", "a", 1, Some(10)),
        ev("MODIFIED", "a", 2, Some(12)),
        ev("ADDED", "b", 3, Some(13)),
        // A delete in flight at a kill; the watcher below learns its revision (14).
        ev("DELETED", "a", 2, None),
        ev("MODIFIED", "b", 4, Some(20)),
    ];
    let watch = |from: u64, events: Vec<Ev>| Step::Watch {
        from,
        events,
        end: End::Closed,
    };
    let good = vec![
        watch(10, history[1..3].to_vec()),
        watch(
            13,
            vec![ev("DELETED", "a", 2, Some(14)), history[4].clone()],
        ),
        Step::List {
            rv: 15,
            items: [("b".to_string(), (3, 13))].into(),
        },
    ];
    let mut h = history.clone();
    let (_, anomalies) = check(&mut h, &[good]);
    assert!(anomalies.is_empty(), "{anomalies:?}");
    assert_eq!(h[3].rv, Some(14), "the delete's revision is learned");

    let cases: Vec<(&str, Step)> = vec![
        ("gap", watch(10, vec![history[2].clone()])),
        (
            "duplicate",
            watch(10, vec![history[1].clone(), history[1].clone()]),
        ),
        ("phantom", watch(20, vec![ev("ADDED", "c", 9, Some(21))])),
        (
            "wrong value",
            watch(12, vec![ev("ADDED", "b", 99, Some(13))]),
        ),
        (
            "stale relist",
            Step::List {
                rv: 20,
                items: [("b".to_string(), (3, 13))].into(),
            },
        ),
    ];
    for (what, step) in cases {
        let mut h = history.clone();
        let (_, anomalies) = check(&mut h, &[vec![step]]);
        assert!(!anomalies.is_empty(), "{what} went unnoticed");
    }
}
