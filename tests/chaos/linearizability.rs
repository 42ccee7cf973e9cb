//! Campaign 2, linearizability: 32 clients do creates, updates with resourceVersion
//! preconditions, deletes (with and without preconditions), gets and lists on a few keys,
//! while the server is killed with SIGKILL and restarted now and then. Every operation is
//! recorded with its invocation and response times; operations cut off by a kill have an
//! unknown outcome. The history then goes through [`crate::linearize`], a Porcupine-style
//! checker for a key-value register with compare-and-swap, partitioned per key.
//!
//! Short form (CI): 6,000 operations, 3 kills. Long form: `KEDGE_CHAOS_OPS=100000`
//! (`make chaos`), a kill every ~2,000 operations. The same campaign runs on one server
//! (the embedded store) and on two servers sharing an etcd, the clients spread over both.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kedge::kubeclient::KubeClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::linearize::{self, Input, Operation, Output};
use crate::server::{ChaosServer, call, knob, rv_of, seed};

const NS: &str = "lin";
const KEYS: usize = 4;
const CLIENTS: usize = 32;

fn value_of(obj: &Value) -> u64 {
    obj.pointer("/data/value")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no data.value in {obj}"))
}

fn object(key: &str, value: u64, rv: Option<u64>) -> Value {
    let mut meta = json!({"name": key, "namespace": NS, "labels": {"chaos": "lin"}});
    if let Some(rv) = rv {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
        "data": {"value": value.to_string()}})
}

/// Sends `input` and maps the answer to the model's output (`Unknown` when the server did
/// not answer). An answer the model has no place for is an anomaly.
async fn perform(
    conn: &mut kedge::kubeclient::Connection,
    input: &Input,
) -> Result<Output, String> {
    let base = format!("/api/v1/namespaces/{NS}/configmaps");
    let reply = match input {
        Input::Create { key, value } => {
            call(
                conn,
                http::Method::POST,
                &base,
                Some(&object(key, *value, None)),
            )
            .await
        }
        Input::Update { key, expect, value } => {
            let body = object(key, *value, Some(*expect));
            call(
                conn,
                http::Method::PUT,
                &format!("{base}/{key}"),
                Some(&body),
            )
            .await
        }
        Input::Delete { key, expect } => {
            let body = expect.map(|rv| {
                json!({"apiVersion": "v1", "kind": "DeleteOptions",
                    "preconditions": {"resourceVersion": rv.to_string()}})
            });
            call(
                conn,
                http::Method::DELETE,
                &format!("{base}/{key}"),
                body.as_ref(),
            )
            .await
        }
        Input::Get { key } => call(conn, http::Method::GET, &format!("{base}/{key}"), None).await,
        Input::List => {
            let path = format!("{base}?labelSelector=chaos%3Dlin");
            call(conn, http::Method::GET, &path, None).await
        }
    };
    let Some((code, body)) = reply else {
        return Ok(Output::Unknown);
    };
    let reason = body["reason"].as_str().unwrap_or_default();
    Ok(match (input, code) {
        // A server going down may answer 5xx on its way: no verdict either way.
        (_, 500..) => Output::Unknown,
        (Input::Create { .. } | Input::Update { .. }, 200 | 201) => {
            Output::Written { rv: rv_of(&body) }
        }
        (Input::Create { .. }, 409) if reason == "AlreadyExists" => Output::Exists,
        (Input::Update { .. } | Input::Delete { .. }, 409) if reason == "Conflict" => {
            Output::Conflict
        }
        (Input::Update { .. } | Input::Delete { .. } | Input::Get { .. }, 404) => Output::NotFound,
        (Input::Delete { .. }, 200 | 202) => Output::Deleted,
        (Input::Get { .. }, 200) => Output::Found {
            value: value_of(&body),
            rv: rv_of(&body),
        },
        (Input::List, 200) => Output::Listed(
            body["items"]
                .as_array()
                .ok_or_else(|| format!("a list without items: {body}"))?
                .iter()
                .map(|o| {
                    let name = o["metadata"]["name"].as_str().unwrap_or_default();
                    (name.to_string(), (value_of(o), rv_of(o)))
                })
                .collect(),
        ),
        _ => return Err(format!("{input:?} answered {code}: {body}")),
    })
}

/// What the clients share.
struct Run {
    /// The servers' admin kubeconfigs: client `id` talks to `id % len`.
    kubeconfigs: Vec<std::path::PathBuf>,
    /// Operations started so far, of `total`.
    taken: AtomicU64,
    total: u64,
    epoch: Instant,
    history: Mutex<Vec<Operation>>,
    anomalies: Mutex<Vec<String>>,
}

/// One client: operations until `total` are taken, reconnecting whenever the server is away.
async fn client(id: usize, run: Arc<Run>, mut rng: StdRng) {
    let Run {
        kubeconfigs,
        taken,
        total,
        epoch,
        history,
        anomalies,
    } = &*run;
    let (total, epoch) = (*total, *epoch);
    let mut seq = 0u64;
    // The resourceVersion this client last saw per key: what its updates expect.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut conn = None;
    let kubeconfig = &kubeconfigs[id % kubeconfigs.len()];
    while taken.fetch_add(1, Ordering::Relaxed) < total {
        if conn.is_none() {
            let c = match KubeClient::from_kubeconfig(kubeconfig) {
                Ok(k) => k.connect().await.ok(),
                Err(_) => None,
            };
            if c.is_none() {
                taken.fetch_sub(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            conn = c;
        }
        let key = format!("k{}", rng.random_range(0..KEYS));
        seq += 1;
        let value = (id as u64 + 1) * 1_000_000_000 + seq;
        let input = match rng.random_range(0..100) {
            0..25 => Input::Get { key },
            25..35 => Input::List,
            35..50 => Input::Create { key, value },
            50..85 => Input::Update {
                expect: seen.get(&key).copied().unwrap_or(1),
                key,
                value,
            },
            85..93 => Input::Delete {
                expect: seen.get(&key).copied(),
                key,
            },
            _ => Input::Delete { key, expect: None },
        };
        let call = epoch.elapsed().as_nanos() as u64;
        let output = match perform(conn.as_mut().unwrap(), &input).await {
            Ok(o) => o,
            Err(e) => {
                anomalies.lock().unwrap().push(e);
                Output::Unknown
            }
        };
        let ret = epoch.elapsed().as_nanos() as u64;
        match (&input, &output) {
            (Input::Create { key, .. } | Input::Update { key, .. }, Output::Written { rv })
            | (Input::Get { key }, Output::Found { rv, .. }) => {
                seen.insert(key.clone(), *rv);
            }
            (_, Output::Listed(items)) => {
                for (k, (_, rv)) in items {
                    seen.insert(k.clone(), *rv);
                }
            }
            (_, Output::Unknown) => conn = None,
            _ => {}
        }
        history.lock().unwrap().push(Operation {
            client: id,
            input,
            output,
            call,
            ret,
        });
    }
}

#[test]
fn histories_across_restarts_are_linearizable() {
    let _serial = crate::server::one_at_a_time();
    let mut servers = [ChaosServer::start(&[])];
    campaign(&mut servers, "one server");
}

/// The same on two servers sharing an etcd, each client on one of them: what one server
/// acknowledged, a read through the other sees (its reads come from its watch cache, and
/// wait for it to hold etcd's revision at the read's start), across kills of either.
#[test]
fn histories_across_two_servers_on_etcd_are_linearizable() {
    let _serial = crate::server::one_at_a_time();
    let Some(etcd) = crate::harness::start_etcd() else {
        return;
    };
    let a = ChaosServer::start(&["--datastore-endpoint", &etcd.endpoint]);
    let token = std::fs::read_to_string(a.dir.path().join("server/server-token")).unwrap();
    let b = ChaosServer::start(&[
        "--datastore-endpoint",
        &etcd.endpoint,
        "--token",
        token.trim(),
    ]);
    let mut servers = [a, b];
    campaign(&mut servers, "two servers on etcd");
    drop(etcd);
}

/// [`CLIENTS`] clients spread over `servers`, kills spread over the run (taking the servers
/// in turn), then the history checked.
fn campaign(servers: &mut [ChaosServer], label: &str) {
    let total = knob("KEDGE_CHAOS_OPS", 6000);
    let mut rng = StdRng::seed_from_u64(seed("linearizability"));
    let began = Instant::now();
    let kubeconfigs = servers
        .iter()
        .map(|s| s.dir.path().join("server/admin.kubeconfig"))
        .collect();
    let rt = crate::server::runtime();
    rt.block_on(servers[0].namespace(NS));
    let run = Arc::new(Run {
        kubeconfigs,
        taken: AtomicU64::new(0),
        total,
        epoch: Instant::now(),
        history: Mutex::default(),
        anomalies: Mutex::default(),
    });
    let taken = &run.taken;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|id| rt.spawn(client(id, run.clone(), StdRng::seed_from_u64(rng.random()))))
        .collect();
    // Kills spread over the run (at random points of their share of it), none in the last
    // part, so the history ends with answered operations.
    let kills = knob("KEDGE_CHAOS_KILLS", (total / 2000).max(3));
    let share = total / (kills + 1);
    for k in 0..kills {
        let at = share * k + share / 2 + rng.random_range(0..share);
        while taken.load(Ordering::Relaxed) < at {
            std::thread::sleep(Duration::from_millis(5));
        }
        let server = &mut servers[k as usize % servers.len()];
        server.crash();
        server.restart();
    }
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    let ran = began.elapsed();
    for server in servers.iter_mut() {
        server.crash();
    }
    let history = std::mem::take(&mut *run.history.lock().unwrap());
    let unknown = history
        .iter()
        .filter(|o| matches!(o.output, Output::Unknown))
        .count();
    let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
    let report = linearize::check(&history, &keys, Duration::from_secs(120));
    let anomalies = run.anomalies.lock().unwrap().clone();
    assert!(
        anomalies.is_empty(),
        "answers outside the model:\n{}",
        anomalies.join("\n")
    );
    println!(
        "linearizability ({label}): {} operations by {CLIENTS} clients on {KEYS} keys in {:.0} s across {kills} SIGKILL restarts ({unknown} with unknown outcome); {report}",
        history.len(),
        ran.as_secs_f64(),
    );
    assert!(report.is_linearizable(), "{report:#?}");
}
