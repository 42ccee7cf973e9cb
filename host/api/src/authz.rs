//! Authorization of node identities: Kubernetes' Node authorizer and NodeRestriction admission
//! in one place.
//!
//! A node (`system:node:<name>` in `system:nodes`, from its client certificate) may:
//! - read, list and watch only the pods bound to it (a list or watch must select
//!   `spec.nodeName=<name>`), write their status, delete them, and read their logs;
//! - read the Secrets and ConfigMaps those pods use (image pull secrets, volumes, env), one at
//!   a time — never list them;
//! - create and update its own Node (and its status) and its own Lease in `kube-node-lease`;
//!   read Nodes, Services, Endpoints, EndpointSlices (all namespaces, as kube-proxy and the
//!   agent's service proxy and DNS need) and Namespaces;
//! - create and update Events;
//! - get the ServiceAccounts its pods use, and request tokens bound to its pods for them;
//! - get the PersistentVolumeClaims its pods use and the volumes bound to them; list, watch
//!   and update — only to drop finalizers — the local-path volumes labelled
//!   `kedge.io/local-path-node=<name>` (its agent removes their directories and clean-up
//!   finalizer).
//!
//! Proxying through the API server (`pods/proxy`, `services/proxy`, `nodes/proxy`) is not for
//! nodes; relaying a TCP connection to another node's pod (`nodes/<name>/relay`) is for nodes
//! only, checked in [`super::relay`]. Everything else is refused with 403, worded as kube-apiserver words it. Other identities
//! are not restricted here: masters not at all, everyone else by RBAC ([`super::rbac`]).

use axum::http::Method;
use serde_json::Value;

use super::error::ApiError;
use super::ops::Api;
use crate::auth::Identity;
use kedge_core::pod;
use kedge_core::resources::{self, Resource};

/// What a request asks to do to what.
pub struct Request<'a> {
    pub method: &'a Method,
    pub res: &'static Resource,
    pub namespace: &'a str,
    pub name: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub query: &'a std::collections::HashMap<String, String>,
    pub body: &'a [u8],
}

/// The authorization verb of a resource request (kube's `RequestInfo.Verb`).
pub fn verb(
    method: &Method,
    named: bool,
    query: &std::collections::HashMap<String, String>,
) -> &'static str {
    let watch = query
        .get("watch")
        .is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
    match (method, named) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

impl Request<'_> {
    fn verb(&self) -> &'static str {
        verb(self.method, self.name.is_some(), self.query)
    }

    /// The object's name: the URL's, or the body's for a create.
    fn object_name(&self) -> Option<String> {
        if let Some(n) = self.name {
            return Some(n.to_string());
        }
        let v: Value = serde_json::from_slice(self.body).ok()?;
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// The node name of a node identity.
pub fn node_of(id: &Identity) -> Option<&str> {
    if !id
        .groups
        .iter()
        .any(|g| g == kedge_tunnel::server::NODES_GROUP)
    {
        return None;
    }
    id.user.strip_prefix(kedge_tunnel::server::NODE_USER_PREFIX)
}

/// Refuses what a node may not do; anything else passes.
pub fn authorize(api: &Api, id: &Identity, r: &Request<'_>) -> Result<(), ApiError> {
    let Some(node) = node_of(id) else {
        return Ok(());
    };
    let verb = r.verb();
    let refuse = |why: &str| -> ApiError {
        let a = super::rbac::Attributes::resource(
            verb,
            r.res.group,
            r.res.plural,
            r.sub.unwrap_or_default(),
            r.namespace,
            r.name.unwrap_or_default(),
        );
        super::rbac::forbidden(id, &a, why)
    };
    let reads = matches!(verb, "get" | "list" | "watch");
    if r.sub == Some("proxy") {
        return Err(refuse("not allowed for nodes"));
    }
    match (r.res.group, r.res.kind) {
        ("", "Node") => {
            if reads {
                return Ok(());
            }
            match r.object_name() {
                Some(n) if n == node && verb != "deletecollection" => Ok(()),
                _ => Err(refuse(&format!(
                    "node {node:?} may only modify its own Node"
                ))),
            }
        }
        ("coordination.k8s.io", "Lease") => {
            if r.namespace != "kube-node-lease"
                || matches!(verb, "list" | "watch" | "deletecollection")
            {
                return Err(refuse(&format!(
                    "node {node:?} may only use its own Lease in kube-node-lease"
                )));
            }
            match r.object_name() {
                Some(n) if n == node => Ok(()),
                _ => Err(refuse(&format!("node {node:?} may only use its own Lease"))),
            }
        }
        ("", "Pod") => match verb {
            "list" | "watch" => {
                let selects_self = r.query.get("fieldSelector").is_some_and(|fs| {
                    fs.split(',').any(|t| {
                        matches!(t.trim().split_once('='), Some((k, v))
                            if k.trim_end_matches('=') == "spec.nodeName" && v.trim_start_matches('=') == node)
                    })
                });
                if selects_self {
                    Ok(())
                } else {
                    Err(refuse(&format!(
                        "a node may only {verb} the pods bound to it (fieldSelector spec.nodeName={node})"
                    )))
                }
            }
            "get" | "update" | "patch" | "delete" => {
                // Writes are the status and the final delete, as kubelet does them.
                if matches!(verb, "update" | "patch") && r.sub != Some("status") {
                    return Err(refuse("a node may only write the status of its pods"));
                }
                if matches!(r.sub, Some("exec" | "attach" | "portforward" | "binding")) {
                    return Err(refuse("not allowed for nodes"));
                }
                let name = r.name.unwrap_or_default();
                let bound = api.get(r.res, r.namespace, name).ok().and_then(|p| {
                    p.pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
                if bound.as_deref() == Some(node) {
                    Ok(())
                } else {
                    Err(refuse(&format!(
                        "no relationship found between node {node:?} and this object"
                    )))
                }
            }
            _ => Err(refuse("not allowed for nodes")),
        },
        ("", "Secret" | "ConfigMap") => {
            if verb != "get" {
                return Err(refuse(&format!(
                    "a node may only get the {} its pods use, one at a time",
                    r.res.plural
                )));
            }
            let name = r.name.unwrap_or_default();
            if used_by_pods_on(api, node, r.namespace, r.res.kind, name) {
                Ok(())
            } else {
                Err(refuse(&format!(
                    "no relationship found between node {node:?} and this object"
                )))
            }
        }
        ("", "PersistentVolumeClaim") => {
            let name = r.name.unwrap_or_default();
            if verb == "get" && claim_used_on(api, node, r.namespace, name) {
                Ok(())
            } else {
                Err(refuse(&format!(
                    "no relationship found between node {node:?} and this object"
                )))
            }
        }
        ("", "PersistentVolume") => persistent_volume(api, node, r, verb).map_err(|w| refuse(&w)),
        // kube's system:node role: events are written, never read (they tell of every
        // namespace's pods; a gateway has no business reading other nodes' story).
        ("", "Event") => {
            if matches!(verb, "create" | "update" | "patch") {
                Ok(())
            } else {
                Err(refuse("not allowed for nodes"))
            }
        }
        ("", "ServiceAccount") => {
            // kubelet's projected tokens: a token bound to one of its pods, for that pod's
            // ServiceAccount; and a read of the ServiceAccounts its pods use.
            let name = r.name.unwrap_or_default();
            let allowed = match (verb, r.sub) {
                ("create", Some("token")) => {
                    let body: Value = serde_json::from_slice(r.body).unwrap_or_default();
                    let bound = body.pointer("/spec/boundObjectRef");
                    let pod = bound
                        .filter(|b| b["kind"] == "Pod")
                        .and_then(|b| b["name"].as_str())
                        .and_then(|p| api.get(pods_res(), r.namespace, p).ok());
                    pod.is_some_and(|p| {
                        p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                            && service_account_of(&p) == name
                    })
                }
                ("get", None) => pods_on(api, node, r.namespace)
                    .iter()
                    .any(|p| service_account_of(p) == name),
                _ => false,
            };
            if allowed {
                Ok(())
            } else {
                Err(refuse(&format!(
                    "no relationship found between node {node:?} and this object"
                )))
            }
        }
        // RuntimeClasses: system:node's get/list/watch (kubelet resolves a pod's handler).
        ("", "Service" | "Endpoints" | "Namespace")
        | ("discovery.k8s.io", "EndpointSlice")
        | ("node.k8s.io", "RuntimeClass")
            if reads =>
        {
            Ok(())
        }
        _ => Err(refuse("not allowed for nodes")),
    }
}

/// A node's access to PersistentVolumes: get those its pods' claims are bound to; list,
/// watch, get and update (only to drop the clean-up finalizer) the local-path volumes labelled
/// with its name (a list or watch must select exactly that label). Nothing else.
fn persistent_volume(api: &Api, node: &str, r: &Request<'_>, verb: &str) -> Result<(), String> {
    let label = format!("kedge.io/local-path-node={node}");
    let no = || format!("no relationship found between node {node:?} and this object");
    match verb {
        "list" | "watch" => {
            if r.query.get("labelSelector").map(|s| s.trim()) == Some(label.as_str()) {
                Ok(())
            } else {
                Err(format!(
                    "a node may only {verb} the persistentvolumes labelled {label}"
                ))
            }
        }
        "get" | "update" => {
            if r.sub.is_some() {
                return Err(no());
            }
            let name = r.name.unwrap_or_default();
            let Some(res) = resources::by_kind("v1", "PersistentVolume") else {
                return Err(no());
            };
            let Ok(pv) = api.get(res, "", name) else {
                return Err(no());
            };
            let labelled = pv
                .pointer("/metadata/labels/kedge.io~1local-path-node")
                .and_then(Value::as_str)
                == Some(node);
            let claimed = verb == "get"
                && pv.pointer("/spec/claimRef").is_some_and(|c| {
                    claim_used_on(
                        api,
                        node,
                        c["namespace"].as_str().unwrap_or_default(),
                        c["name"].as_str().unwrap_or_default(),
                    )
                });
            // An update only drops finalizers (the clean-up one): a node may not rebind,
            // relabel or change the reclaim policy of a volume.
            let stays = verb == "get"
                || serde_json::from_slice::<Value>(r.body)
                    .ok()
                    .is_some_and(|b| only_drops_finalizers(&pv, &b));
            if (labelled || claimed) && stays {
                Ok(())
            } else {
                Err(no())
            }
        }
        _ => Err("not allowed for nodes".into()),
    }
}

/// Whether `new` is `old` less some finalizers, as far as a node's update could change it.
fn only_drops_finalizers(old: &Value, new: &Value) -> bool {
    let same = |p: &str| old.pointer(p) == new.pointer(p);
    let kept = |o: &Value| {
        o.pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let before = kept(old);
    same("/spec")
        && same("/metadata/labels")
        && same("/metadata/annotations")
        && same("/metadata/ownerReferences")
        && kept(new).iter().all(|f| before.contains(f))
}

/// Whether a pod bound to `node` in `ns` mounts the claim `name`.
fn claim_used_on(api: &Api, node: &str, ns: &str, name: &str) -> bool {
    pods_on(api, node, ns).iter().any(|p| {
        p.pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|v| {
                v.pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                    == Some(name)
            })
    })
}

fn pods_res() -> &'static Resource {
    resources::by_kind("v1", "Pod").expect("served")
}

/// The pods bound to `node` in `ns`.
fn pods_on(api: &Api, node: &str, ns: &str) -> Vec<Value> {
    let Ok(list) = api.list(pods_res(), ns, &Default::default()) else {
        return Vec::new();
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .cloned()
        .collect()
}

fn service_account_of(pod: &Value) -> &str {
    pod.pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

/// Whether a pod bound to `node` in `ns` uses the Secret or ConfigMap `name`.
fn used_by_pods_on(api: &Api, node: &str, ns: &str, kind: &str, name: &str) -> bool {
    pods_on(api, node, ns)
        .iter()
        .any(|p| pod_uses(p, kind, name))
}

/// Whether `pod` names the Secret (`kind` "Secret") or ConfigMap `name`: pull secrets,
/// volumes (incl. projected), env and envFrom of every container, init and ephemeral ones too.
fn pod_uses(pod: &Value, kind: &str, name: &str) -> bool {
    let kind = match kind {
        "Secret" => pod::Kind::Secret,
        _ => pod::Kind::ConfigMap,
    };
    pod::referenced_objects(pod)
        .iter()
        .any(|r| r.kind == kind && r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{WriteOptions, system_clock};
    use kedge_store::redb::{Options, RedbStore};
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn node(name: &str) -> Identity {
        Identity {
            user: format!("system:node:{name}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    struct Case<'a> {
        method: Method,
        kind: (&'a str, &'a str),
        ns: &'a str,
        name: Option<&'a str>,
        sub: Option<&'a str>,
        query: &'a [(&'a str, &'a str)],
        body: Value,
    }

    fn check(api: &Api, id: &Identity, c: Case<'_>) -> Result<(), String> {
        let q: HashMap<String, String> = c
            .query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = serde_json::to_vec(&c.body).unwrap();
        authorize(
            api,
            id,
            &Request {
                method: &c.method,
                res: resources::by_kind(c.kind.0, c.kind.1).unwrap(),
                namespace: c.ns,
                name: c.name,
                sub: c.sub,
                query: &q,
                body: &body,
            },
        )
        .map_err(|e| e.message)
    }

    fn get(
        kind: (&'static str, &'static str),
        ns: &'static str,
        name: &'static str,
    ) -> Case<'static> {
        Case {
            method: Method::GET,
            kind,
            ns,
            name: Some(name),
            sub: None,
            query: &[],
            body: Value::Null,
        }
    }

    /// kubelet's projected tokens: a node may request a token only bound to one of its own
    /// pods, for that pod's ServiceAccount, and read only the ServiceAccounts its pods use.
    #[test]
    fn nodes_mint_tokens_only_for_their_own_pods_service_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let r = |k: &str, v: &str| resources::by_kind(k, v).unwrap();
        api.create(
            r("v1", "Namespace"),
            "",
            json!({"metadata": {"name": "default"}}),
            &w,
        )
        .unwrap();
        for (pod, node, sa) in [("a", "n1", "builder"), ("b", "n2", "default")] {
            api.create(
                r("v1", "Pod"),
                "default",
                json!({"metadata": {"name": pod}, "spec": {"nodeName": node,
                    "serviceAccountName": sa, "containers": [{"name": "c", "image": "x:1"}]}}),
                &w,
            )
            .unwrap();
        }
        let token = |sa: &'static str, bound: Value| Case {
            method: Method::POST,
            kind: ("v1", "ServiceAccount"),
            ns: "default",
            name: Some(sa),
            sub: Some("token"),
            query: &[],
            body: json!({"spec": {"boundObjectRef": bound}}),
        };
        let pod = |name: &str| json!({"kind": "Pod", "apiVersion": "v1", "name": name});
        let n1 = node("n1");
        assert_eq!(check(&api, &n1, token("builder", pod("a"))), Ok(()));
        for (sa, bound, why) in [
            ("builder", pod("b"), "another node's pod"),
            ("default", pod("a"), "not the pod's ServiceAccount"),
            ("builder", Value::Null, "not bound to a pod"),
            (
                "builder",
                json!({"kind": "Secret", "name": "a"}),
                "bound to a Secret",
            ),
            ("builder", pod("missing"), "no such pod"),
        ] {
            assert!(check(&api, &n1, token(sa, bound)).is_err(), "{why}");
        }
        assert_eq!(
            check(
                &api,
                &n1,
                get(("v1", "ServiceAccount"), "default", "builder")
            ),
            Ok(())
        );
        assert!(
            check(
                &api,
                &n1,
                get(("v1", "ServiceAccount"), "default", "default")
            )
            .is_err(),
            "no pod of n1 uses it"
        );
        let list = Case {
            method: Method::GET,
            kind: ("v1", "ServiceAccount"),
            ns: "default",
            name: None,
            sub: None,
            query: &[],
            body: Value::Null,
        };
        assert!(check(&api, &n1, list).is_err());
    }

    #[test]
    fn nodes_reach_only_their_own_pods_and_what_those_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let r = |k: &str, v: &str| resources::by_kind(k, v).unwrap();
        api.create(
            r("v1", "Namespace"),
            "",
            json!({"metadata": {"name": "default"}}),
            &w,
        )
        .unwrap();
        for (pod, node, secret, cm) in [
            ("a", "n1", "pull-a", "conf-a"),
            ("b", "n2", "pull-b", "conf-b"),
        ] {
            api.create(
                r("v1", "Pod"),
                "default",
                json!({"metadata": {"name": pod}, "spec": {"nodeName": node,
                    "imagePullSecrets": [{"name": secret}],
                    "volumes": [{"name": "c", "configMap": {"name": cm}}],
                    "containers": [{"name": "c", "image": "x:1"}]}}),
                &w,
            )
            .unwrap();
        }
        let n1 = node("n1");
        let ok = |c: Case<'_>| check(&api, &n1, c).unwrap();
        let no = |c: Case<'_>| {
            let e = check(&api, &n1, c).unwrap_err();
            assert!(e.contains("is forbidden: User \"system:node:n1\""), "{e}");
            e
        };
        ok(get(("v1", "Pod"), "default", "a"));
        let e = no(get(("v1", "Pod"), "default", "b"));
        assert_eq!(
            e,
            "pods \"b\" is forbidden: User \"system:node:n1\" cannot get resource \"pods\" in API group \"\" in the namespace \"default\": no relationship found between node \"n1\" and this object",
            "worded as RBAC's refusals (rbac::forbidden)"
        );
        ok(Case {
            method: Method::GET,
            name: None,
            query: &[("fieldSelector", "spec.nodeName=n1"), ("watch", "true")],
            ..get(("v1", "Pod"), "", "")
        });
        no(Case {
            method: Method::GET,
            name: None,
            query: &[],
            ..get(("v1", "Pod"), "", "")
        });
        ok(get(("v1", "Secret"), "default", "pull-a"));
        no(get(("v1", "Secret"), "default", "pull-b"));
        no(get(("v1", "Secret"), "kube-system", "bootstrap-token-abc"));
        ok(get(("v1", "ConfigMap"), "default", "conf-a"));
        no(get(("v1", "ConfigMap"), "default", "conf-b"));
        no(Case {
            name: None,
            ..get(("v1", "Secret"), "default", "")
        });
        ok(Case {
            method: Method::PUT,
            sub: Some("status"),
            ..get(("v1", "Pod"), "default", "a")
        });
        no(Case {
            method: Method::PUT,
            sub: Some("status"),
            ..get(("v1", "Pod"), "default", "b")
        });
        no(Case {
            method: Method::PUT,
            ..get(("v1", "Pod"), "default", "a")
        });
        ok(Case {
            method: Method::POST,
            name: None,
            body: json!({"metadata": {"name": "n1"}}),
            ..get(("v1", "Node"), "", "")
        });
        no(Case {
            method: Method::POST,
            name: None,
            body: json!({"metadata": {"name": "n2"}}),
            ..get(("v1", "Node"), "", "")
        });
        no(Case {
            method: Method::PUT,
            sub: Some("status"),
            ..get(("v1", "Node"), "", "n2")
        });
        ok(Case {
            method: Method::PUT,
            ..get(("coordination.k8s.io/v1", "Lease"), "kube-node-lease", "n1")
        });
        no(Case {
            method: Method::PUT,
            ..get(("coordination.k8s.io/v1", "Lease"), "kube-node-lease", "n2")
        });
        ok(Case {
            method: Method::POST,
            name: None,
            body: json!({"metadata": {"name": "x.1"}}),
            ..get(("v1", "Event"), "default", "")
        });
        // Events are written, never read.
        no(get(("v1", "Event"), "default", "x.1"));
        no(Case {
            name: None,
            query: &[("watch", "true")],
            ..get(("v1", "Event"), "", "")
        });
        no(Case {
            method: Method::POST,
            name: None,
            body: json!({"metadata": {"name": "d"}}),
            ..get(("apps/v1", "Deployment"), "default", "")
        });
        // Admins are not restricted here.
        let admin = Identity {
            user: "kedge-admin".into(),
            groups: vec!["system:masters".into()],
        };
        check(&api, &admin, get(("v1", "Secret"), "default", "pull-b")).unwrap();
    }

    /// A node reads and updates its own local-path volumes, and an update may only drop a
    /// finalizer (its agent's clean-up), never rebind, relabel or change the reclaim policy.
    #[test]
    fn nodes_only_drop_finalizers_of_their_own_local_path_volumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let res = resources::by_kind("v1", "PersistentVolume").unwrap();
        let mut volumes = Vec::new();
        for (name, node) in [("mine", "n1"), ("theirs", "n2")] {
            let pv = json!({"metadata": {"name": name,
                    "labels": {"kedge.io/local-path-node": node},
                    "finalizers": ["kedge.io/local-path-cleanup"]},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": format!("/s/{name}")}}});
            volumes.push(api.create(res, "", pv, &WriteOptions::default()).unwrap());
        }
        let n1 = node("n1");
        let pv = ("v1", "PersistentVolume");
        let put = |name: &'static str, body: Value| Case {
            method: Method::PUT,
            body,
            ..get(pv, "", name)
        };
        let list = |query: &'static [(&'static str, &'static str)]| Case {
            name: None,
            query,
            ..get(pv, "", "")
        };
        check(&api, &n1, get(pv, "", "mine")).unwrap();
        check(&api, &n1, get(pv, "", "theirs")).unwrap_err();
        check(
            &api,
            &n1,
            list(&[("labelSelector", "kedge.io/local-path-node=n1")]),
        )
        .unwrap();
        check(&api, &n1, list(&[])).unwrap_err();
        check(
            &api,
            &n1,
            list(&[("labelSelector", "kedge.io/local-path-node=n2")]),
        )
        .unwrap_err();

        let mut released = volumes[0].clone();
        released["metadata"]["finalizers"] = json!([]);
        check(&api, &n1, put("mine", released)).unwrap();
        let changes: [fn(&mut Value); 4] = [
            |v| v["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete"),
            |v| v["spec"]["claimRef"] = json!({"namespace": "default", "name": "x"}),
            |v| v["metadata"]["labels"]["kedge.io/local-path-node"] = json!("n2"),
            |v| v["metadata"]["finalizers"] = json!(["kedge.io/local-path-cleanup", "x"]),
        ];
        for change in changes {
            let mut changed = volumes[0].clone();
            change(&mut changed);
            check(&api, &n1, put("mine", changed)).unwrap_err();
        }
        check(&api, &n1, put("theirs", volumes[1].clone())).unwrap_err();
        check(
            &api,
            &n1,
            Case {
                method: Method::DELETE,
                ..get(pv, "", "mine")
            },
        )
        .unwrap_err();
    }

    /// What kube-proxy and the agent's DNS read: Services, Endpoints, EndpointSlices (every
    /// namespace) and Nodes; never written, and no proxying through the API server.
    #[test]
    fn nodes_read_services_endpoint_slices_and_nodes_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let n1 = node("n1");
        let slice = ("discovery.k8s.io/v1", "EndpointSlice");
        let class = ("node.k8s.io/v1", "RuntimeClass");
        assert_eq!(check(&api, &n1, get(class, "", "wasm")), Ok(()));
        let write = Case {
            method: Method::PUT,
            ..get(class, "", "wasm")
        };
        assert!(check(&api, &n1, write).is_err());
        for kind in [("v1", "Service"), ("v1", "Endpoints"), slice] {
            for ns in ["", "default", "kube-system"] {
                for query in [&[][..], &[("watch", "true")][..]] {
                    let list = Case {
                        name: None,
                        query,
                        ..get(kind, ns, "")
                    };
                    assert_eq!(check(&api, &n1, list), Ok(()), "{kind:?} in {ns:?}");
                }
            }
            assert_eq!(check(&api, &n1, get(kind, "default", "web")), Ok(()));
            for method in [Method::PUT, Method::DELETE] {
                let write = Case {
                    method,
                    ..get(kind, "default", "web")
                };
                assert!(check(&api, &n1, write).is_err(), "{kind:?}");
            }
        }
        let nodes = Case {
            name: None,
            query: &[("watch", "true")],
            ..get(("v1", "Node"), "", "")
        };
        assert_eq!(check(&api, &n1, nodes), Ok(()));
        assert_eq!(check(&api, &n1, get(("v1", "Node"), "", "n2")), Ok(()));
        for (kind, ns, name) in [
            (("v1", "Node"), "", "n1"),
            (("v1", "Service"), "default", "web"),
            (("v1", "Pod"), "default", "a"),
        ] {
            let proxy = Case {
                sub: Some("proxy"),
                ..get(kind, ns, name)
            };
            let e = check(&api, &n1, proxy).unwrap_err();
            assert!(e.contains("/proxy\""), "{e}");
        }
    }
}
