//! The Secrets and ConfigMaps a pod names — `imagePullSecrets`, `configMap`, `secret` and
//! `projected` volumes, `env[].valueFrom` and `envFrom` of its (init, ephemeral) containers —
//! walked in one place for the node authorizer (what a node may read) and the agent (what it
//! fetches and keeps); and what the API and the agent must agree on about a pod's containers
//! (which are sidecars, which `fieldRef` paths resolve).

use std::collections::BTreeSet;

use serde_json::Value;

use super::meta;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    /// The resource's plural, as in its API path.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
        }
    }

    /// As kubelet names them in its messages (`configmap "x" not found`).
    pub fn word(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// One Secret or ConfigMap a pod names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjRef {
    pub kind: Kind,
    pub ns: String,
    pub name: String,
}

impl std::fmt::Display for ObjRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.word(), self.ns, self.name)
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn add(out: &mut BTreeSet<ObjRef>, kind: Kind, ns: &str, name: &Value) {
    if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
        out.insert(ObjRef {
            kind,
            ns: ns.to_string(),
            name: name.to_string(),
        });
    }
}

/// What one of the pod's `volumes` names (a `configMap`, `secret` or `projected` one).
pub fn volume_refs(ns: &str, volume: &Value) -> BTreeSet<ObjRef> {
    let mut out = BTreeSet::new();
    add_volume_refs(ns, volume, &mut out);
    out
}

fn add_volume_refs(ns: &str, v: &Value, out: &mut BTreeSet<ObjRef>) {
    add(out, Kind::ConfigMap, ns, &v["configMap"]["name"]);
    add(out, Kind::Secret, ns, &v["secret"]["secretName"]);
    for s in arr(&v["projected"]["sources"]) {
        add(out, Kind::ConfigMap, ns, &s["configMap"]["name"]);
        add(out, Kind::Secret, ns, &s["secret"]["name"]);
    }
}

fn add_env_refs(ns: &str, c: &Value, out: &mut BTreeSet<ObjRef>) {
    for e in arr(&c["env"]) {
        let from = &e["valueFrom"];
        add(out, Kind::ConfigMap, ns, &from["configMapKeyRef"]["name"]);
        add(out, Kind::Secret, ns, &from["secretKeyRef"]["name"]);
    }
    for e in arr(&c["envFrom"]) {
        add(out, Kind::ConfigMap, ns, &e["configMapRef"]["name"]);
        add(out, Kind::Secret, ns, &e["secretRef"]["name"]);
    }
}

/// Everything `pod` names, whether or not a container mounts the volume: its pull secrets,
/// volumes, and the env of its containers, init containers and ephemeral containers.
pub fn referenced_objects(pod: &Value) -> BTreeSet<ObjRef> {
    let ns = meta::namespace(pod);
    let mut out = BTreeSet::new();
    let spec = &pod["spec"];
    for s in arr(&spec["imagePullSecrets"]) {
        add(&mut out, Kind::Secret, ns, &s["name"]);
    }
    for v in arr(&spec["volumes"]) {
        add_volume_refs(ns, v, &mut out);
    }
    for c in arr(&spec["initContainers"])
        .iter()
        .chain(arr(&spec["containers"]))
        .chain(arr(&spec["ephemeralContainers"]))
    {
        add_env_refs(ns, c, &mut out);
    }
    out
}

/// What container `c` of `pod` needs to start: its env and envFrom, and the volumes it mounts.
pub fn container_refs(pod: &Value, c: &Value) -> BTreeSet<ObjRef> {
    let ns = meta::namespace(pod);
    let mut out = BTreeSet::new();
    add_env_refs(ns, c, &mut out);
    let mounted: BTreeSet<&str> = arr(&c["volumeMounts"])
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for v in arr(&pod["spec"]["volumes"]) {
        if v["name"].as_str().is_some_and(|n| mounted.contains(n)) {
            add_volume_refs(ns, v, &mut out);
        }
    }
    out
}

/// An init container with `restartPolicy: Always`: a native sidecar.
pub fn is_sidecar(container: &Value) -> bool {
    container["restartPolicy"] == "Always"
}

/// The `fieldRef` paths the node agent resolves, in env and in downwardAPI files (besides
/// `metadata.labels['…']` and `metadata.annotations['…']`); the API refuses others.
pub const FIELD_REF_PATHS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// The `fieldRef` paths only downwardAPI files take: the whole label and annotation maps.
pub const FILE_FIELD_REF_PATHS: [&str; 2] = ["metadata.labels", "metadata.annotations"];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(refs: &BTreeSet<ObjRef>) -> Vec<String> {
        refs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_pod_names_its_objects_and_a_container_only_what_it_needs() {
        let p = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
        "imagePullSecrets": [{"name": "regcred"}, {"name": ""}],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "conf"}},
            {"name": "sec", "secret": {"secretName": "creds"}},
            {"name": "both", "projected": {"sources": [
                {"configMap": {"name": "conf2"}}, {"secret": {"name": "creds2"}}]}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
        "ephemeralContainers": [{"name": "debug",
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "debug-env", "key": "x"}}}]}],
        "containers": [
            {"name": "a", "env": [{"name": "G", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "GREETING"}}}],
             "volumeMounts": [{"name": "sec", "mountPath": "/s"}]},
            {"name": "b", "envFrom": [{"configMapRef": {"name": "envs"}}],
             "volumeMounts": [{"name": "both", "mountPath": "/b"}]},
        ]}});
        assert_eq!(
            names(&referenced_objects(&p)),
            [
                "configmap default/conf",
                "configmap default/conf2",
                "configmap default/envs",
                "secret default/creds",
                "secret default/creds2",
                "secret default/debug-env",
                "secret default/init-env",
                "secret default/regcred",
            ]
        );
        let a = &p["spec"]["containers"][0];
        assert_eq!(
            names(&container_refs(&p, a)),
            ["configmap default/conf", "secret default/creds"]
        );
        let b = &p["spec"]["containers"][1];
        assert_eq!(
            names(&container_refs(&p, b)),
            [
                "configmap default/conf2",
                "configmap default/envs",
                "secret default/creds2"
            ]
        );
        assert_eq!(
            names(&volume_refs("default", &p["spec"]["volumes"][2])),
            ["configmap default/conf2", "secret default/creds2"]
        );
        assert!(volume_refs("default", &p["spec"]["volumes"][3]).is_empty());
    }
}
