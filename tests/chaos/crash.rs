//! Campaign 1, crash durability of the server: a pool of writers creates, updates (with
//! resourceVersion preconditions) and deletes ConfigMaps through the API while the server is
//! killed with SIGKILL at a random moment; after each restart every acknowledged write must
//! be there exactly (value and resourceVersion), and each write in flight at the kill either
//! took effect whole or not at all. resourceVersions must keep growing across restarts.
//!
//! Short form (CI): 10 kills. Long form: `KEDGE_CHAOS_CYCLES=1000` (`make chaos`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::server::{ChaosServer, call, knob, rv_of, seed};

const NS: &str = "crash";
const WRITERS: usize = 8;
const KEYS_PER_WRITER: usize = 4;

/// What the writers last heard about a key, and the write they sent without hearing back.
#[derive(Clone, Debug, Default)]
struct Ledger {
    /// `Some((value, rv))` when acknowledged present, `None` when acknowledged absent.
    acked: Option<(u64, u64)>,
    inflight: Option<Attempt>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Attempt {
    Put(u64),
    Delete,
}

/// What every object written carries: the value twice and a pad derived from it, so a torn
/// or mixed object cannot pass for a whole one.
fn object(key: &str, value: u64, rv: Option<u64>) -> Value {
    let mut meta = json!({"name": key, "namespace": NS});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
        "data": {"value": value.to_string(), "check": value.to_string(), "pad": pad(value)}})
}

fn pad(value: u64) -> String {
    format!("{value:020}").repeat(40)
}

/// The value of a stored object, or why it is not whole.
fn value_of(obj: &Value) -> Result<u64, String> {
    let d = obj.get("data").ok_or("no data")?;
    let v = d["value"].as_str().ok_or("no data.value")?;
    let n: u64 = v.parse().map_err(|_| format!("data.value {v:?}"))?;
    if d["check"].as_str() != Some(v) || d["pad"].as_str() != Some(pad(n).as_str()) {
        return Err(format!("torn object: {obj}"));
    }
    Ok(n)
}

struct WriterRun {
    ledger: Vec<Ledger>,
    acked: u64,
    /// The smallest resourceVersion acknowledged in this run (must exceed every earlier one).
    min_rv: Option<u64>,
    max_rv: u64,
    anomalies: Vec<String>,
}

/// Writes to its own keys until the connection fails (the server was killed).
async fn writer(
    client: kedge::kubeclient::KubeClient,
    w: usize,
    mut ledger: Vec<Ledger>,
    mut next_value: u64,
    mut rng: StdRng,
) -> WriterRun {
    let mut run = WriterRun {
        ledger: Vec::new(),
        acked: 0,
        min_rv: None,
        max_rv: 0,
        anomalies: Vec::new(),
    };
    let Ok(mut conn) = client.connect().await else {
        run.ledger = ledger;
        return run;
    };
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    loop {
        let k = rng.random_range(0..KEYS_PER_WRITER);
        let key = format!("w{w}-k{k}");
        let l = &mut ledger[k];
        assert!(l.inflight.is_none());
        next_value += 1;
        let value = next_value;
        let (attempt, reply) = match l.acked {
            None => {
                l.inflight = Some(Attempt::Put(value));
                let body = object(&key, value, None);
                (
                    Attempt::Put(value),
                    call(&mut conn, http::Method::POST, &base, Some(&body)).await,
                )
            }
            Some((_, rv)) if rng.random_bool(0.75) => {
                l.inflight = Some(Attempt::Put(value));
                let body = object(&key, value, Some(rv));
                let path = format!("{base}/{key}");
                (
                    Attempt::Put(value),
                    call(&mut conn, http::Method::PUT, &path, Some(&body)).await,
                )
            }
            Some((_, rv)) => {
                l.inflight = Some(Attempt::Delete);
                let body = json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "preconditions": {"resourceVersion": rv.to_string()}});
                let path = format!("{base}/{key}");
                (
                    Attempt::Delete,
                    call(&mut conn, http::Method::DELETE, &path, Some(&body)).await,
                )
            }
        };
        let Some((code, body)) = reply else {
            // The server is gone: the outcome of this write is for the restart to tell.
            break;
        };
        match (attempt, code) {
            (Attempt::Put(v), 200 | 201) => {
                let rv = rv_of(&body);
                l.acked = Some((v, rv));
                run.min_rv = Some(run.min_rv.map_or(rv, |m| m.min(rv)));
                run.max_rv = run.max_rv.max(rv);
            }
            (Attempt::Delete, 200) => l.acked = None,
            _ => {
                run.anomalies.push(format!(
                    "{key}: {attempt:?} answered {code} {body} (the writer owns the key and knew its state)"
                ));
                break;
            }
        }
        l.inflight = None;
        run.acked += 1;
    }
    run.ledger = ledger;
    run
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let _serial = crate::server::one_at_a_time();
    let cycles = knob("KEDGE_CHAOS_CYCLES", 10);
    let mut rng = StdRng::seed_from_u64(seed("crash"));
    let began = Instant::now();
    let mut server = ChaosServer::start(&[]);
    let rt = crate::server::runtime();
    rt.block_on(server.namespace(NS));

    let mut ledgers = vec![vec![Ledger::default(); KEYS_PER_WRITER]; WRITERS];
    let mut next_value = [0u64; WRITERS];
    // The largest resourceVersion acknowledged before the latest kill.
    let mut rv_floor = 0u64;
    let (mut acked, mut applied, mut not_applied, mut lost) = (0u64, 0u64, 0u64, 0u64);
    let mut anomalies: Vec<String> = Vec::new();

    for cycle in 0..cycles {
        let client = || {
            kedge::kubeclient::KubeClient::from_kubeconfig(
                &server.dir.path().join("server/admin.kubeconfig"),
            )
            .unwrap()
        };
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let ledger = std::mem::take(&mut ledgers[w]);
                let start = next_value[w];
                next_value[w] += 1_000_000;
                rt.spawn(writer(
                    client(),
                    w,
                    ledger,
                    (w as u64 + 1) * 1_000_000_000_000 + start,
                    StdRng::seed_from_u64(rng.random()),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        server.crash();
        let mut cycle_max = 0;
        for (w, t) in tasks.into_iter().enumerate() {
            let run = rt.block_on(t).expect("writer task");
            ledgers[w] = run.ledger;
            acked += run.acked;
            anomalies.extend(run.anomalies);
            if let Some(min) = run.min_rv
                && min <= rv_floor
            {
                anomalies.push(format!(
                    "cycle {cycle}: writer {w} was acknowledged resourceVersion {min}, not above {rv_floor} acknowledged before the restart"
                ));
            }
            cycle_max = cycle_max.max(run.max_rv);
        }
        rv_floor = rv_floor.max(cycle_max);

        server.restart();
        let (code, list) = rt
            .block_on(server.client().request(
                http::Method::GET,
                &format!("/api/v1/namespaces/{NS}/configmaps"),
                "",
                None,
            ))
            .expect("listing after the restart");
        assert_eq!(code, 200, "{list}");
        if rv_of(&list) < rv_floor {
            anomalies.push(format!(
                "cycle {cycle}: the list after the restart is at resourceVersion {}, below {rv_floor} acknowledged before",
                rv_of(&list)
            ));
        }
        let mut stored: BTreeMap<String, &Value> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| Some((o.pointer("/metadata/name")?.as_str()?.to_string(), o)))
            .filter(|(n, _)| n.starts_with('w'))
            .collect();
        for (w, keys) in ledgers.iter_mut().enumerate() {
            for (k, l) in keys.iter_mut().enumerate() {
                let key = format!("w{w}-k{k}");
                let found = match stored.remove(&key) {
                    None => None,
                    Some(obj) => match value_of(obj) {
                        Ok(v) => Some((v, rv_of(obj))),
                        Err(e) => {
                            anomalies.push(format!("cycle {cycle}: {key}: {e}"));
                            continue;
                        }
                    },
                };
                let exact = found == l.acked;
                let took_effect = match (l.inflight, found) {
                    (Some(Attempt::Put(v)), Some((fv, frv))) => {
                        v == fv && l.acked.is_none_or(|(_, rv)| frv > rv)
                    }
                    (Some(Attempt::Delete), None) => true,
                    _ => false,
                };
                if took_effect {
                    applied += 1;
                } else if exact {
                    if l.inflight.is_some() {
                        not_applied += 1;
                    }
                } else {
                    lost += 1;
                    anomalies.push(format!(
                        "cycle {cycle}: {key}: stored {found:?}, acknowledged {:?}, in flight {:?}",
                        l.acked, l.inflight
                    ));
                }
                l.acked = found;
                l.inflight = None;
            }
        }
        // Every write from now on must be acknowledged above what this list saw.
        rv_floor = rv_floor.max(rv_of(&list));
        for name in stored.keys() {
            anomalies.push(format!(
                "cycle {cycle}: {name} is stored but was never written"
            ));
        }
        assert!(
            anomalies.is_empty(),
            "crash campaign, cycle {cycle}:\n{}\nserver log:\n{}",
            anomalies.join("\n"),
            server.log()
        );
    }
    server.crash();
    println!(
        "crash: {cycles} SIGKILL cycles in {:.0} s: {acked} acknowledged writes, {lost} lost; \
         writes in flight at the kill: {applied} took effect, {not_applied} did not, 0 torn; \
         resourceVersions grew across every restart; restart to API answering: {}",
        began.elapsed().as_secs_f64(),
        server.start_figures()
    );
}
