//! Discovery documents, aggregated (apidiscovery.k8s.io/v2, what kubectl 1.32 asks for first)
//! and legacy (what the Python client reads), all generated from the resource table.

use serde_json::{Value, json};

use kedge_core::resources::{self, Resource, groups};

/// Create-only resources answered from the request and never stored (kube-apiserver's
/// "virtual" review resources). They live here, not in the resource table, because routing,
/// storage, OpenAPI and plugin permissions read that table and must not see them.
pub(crate) static VIRTUAL: &[Resource] = &[
    Resource {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "SelfSubjectReview",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    },
    // `kubectl auth can-i`, and the same question asked about someone else.
    Resource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectAccessReview",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    },
    Resource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SelfSubjectRulesReview",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    },
    Resource {
        group: "authorization.k8s.io",
        version: "v1",
        kind: "SubjectAccessReview",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        namespaced: false,
        short_names: &[],
        categories: &[],
        subresources: &[],
        field_selectors: &[],
    },
];

/// Every resource discovery lists: the stored kinds, the retired versions still served, then
/// the virtual ones.
fn served() -> impl Iterator<Item = &'static Resource> {
    resources::all()
        .into_iter()
        .chain(resources::all_retired().into_iter().map(|r| &r.resource))
        .chain(VIRTUAL.iter())
        .chain(super::resource_metrics::METRICS.iter())
}

/// The named groups discovery lists, in order, each with its versions, the preferred (stored)
/// one first: kubectl maps a kind without a version to its group's first version.
fn served_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let pairs = groups()
        .into_iter()
        .chain(
            resources::all_retired()
                .into_iter()
                .map(|r| (r.resource.group, r.resource.version)),
        )
        .chain(VIRTUAL.iter().map(|r| (r.group, r.version)))
        .chain(
            super::resource_metrics::METRICS
                .iter()
                .map(|r| (r.group, r.version)),
        );
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in pairs.filter(|(g, _)| !g.is_empty()) {
        match out.iter_mut().find(|(known, _)| *known == g) {
            Some((_, versions)) if !versions.contains(&v) => versions.push(v),
            Some(_) => {}
            None => out.push((g, vec![v])),
        }
    }
    out
}

pub(crate) const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-kedge",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-11-25T00:00:00Z",
        "goVersion": "n/a (kedge, Rust)",
        "compiler": "rustc",
        "platform": format!("linux/{}", kedge_core::kube_arch()),
    })
}

/// Every verb of a stored resource kind.
pub(crate) const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn verbs(r: &Resource) -> Vec<&'static str> {
    if VIRTUAL.iter().any(|v| std::ptr::eq(v, r)) {
        return vec!["create"];
    }
    if super::resource_metrics::is_metrics(r) {
        return super::resource_metrics::VERBS.to_vec();
    }
    VERBS
        .iter()
        .copied()
        .filter(|v| *v != "deletecollection" || r.kind != "Namespace")
        .collect()
}

/// Subresources served by the HTTP layer alone, not stored or routed through the resource
/// table: the API server proxy (see [`super::proxy`]).
pub(crate) fn proxy_subresource(r: &Resource) -> bool {
    r.group.is_empty() && matches!(r.kind, "Pod" | "Service" | "Node")
}

/// Every subresource of `r` discovery lists.
fn subresources(r: &Resource) -> impl Iterator<Item = &'static str> {
    r.subresources
        .iter()
        .copied()
        .chain(proxy_subresource(r).then_some("proxy"))
}

fn sub_kind(r: &Resource, sub: &str) -> (&'static str, &'static str, &'static str) {
    match sub {
        "proxy" => match r.kind {
            "Pod" => ("", "v1", "PodProxyOptions"),
            "Service" => ("", "v1", "ServiceProxyOptions"),
            _ => ("", "v1", "NodeProxyOptions"),
        },
        "scale" => ("autoscaling", "v1", "Scale"),
        "binding" => ("", "v1", "Binding"),
        "token" => ("authentication.k8s.io", "v1", "TokenRequest"),
        "log" => ("", "v1", "Pod"),
        "exec" => ("", "v1", "PodExecOptions"),
        "attach" => ("", "v1", "PodAttachOptions"),
        "portforward" => ("", "v1", "PodPortForwardOptions"),
        // What kubectl drain looks for to evict rather than delete.
        "eviction" => ("policy", "v1", "Eviction"),
        _ => (r.group, r.version, r.kind),
    }
}

fn sub_verbs(sub: &str) -> Vec<&'static str> {
    match sub {
        "binding" | "token" | "eviction" => vec!["create"],
        "log" => vec!["get"],
        "exec" | "attach" | "portforward" => vec!["create", "get"],
        "proxy" => vec!["create", "delete", "get", "patch", "update"],
        _ => vec!["get", "patch", "update"],
    }
}

fn aggregated_resource(r: &Resource) -> Value {
    let subs: Vec<Value> = subresources(r)
        .map(|s| {
            let (g, v, k) = sub_kind(r, s);
            json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": sub_verbs(s)})
        })
        .collect();
    let mut v = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": verbs(r),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !subs.is_empty() {
        v["subresources"] = json!(subs);
    }
    v
}

/// `/api` (core = true) or `/apis` as an APIGroupDiscoveryList.
pub(crate) fn aggregated(core: bool) -> Value {
    let mut items = Vec::new();
    let group_list: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        served_groups()
    };
    for (g, vs) in group_list {
        let versions: Vec<Value> = vs
            .iter()
            .map(|v| {
                let resources: Vec<Value> = served()
                    .filter(|r| r.group == g && r.version == *v)
                    .map(aggregated_resource)
                    .collect();
                json!({"version": v, "resources": resources, "freshness": "Current"})
            })
            .collect();
        items.push(json!({
            "metadata": {"name": g, "creationTimestamp": null},
            "versions": versions,
        }));
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub(crate) fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// A group with its versions; the first is preferred.
fn group_doc(g: &str, versions: &[&str]) -> Value {
    let entry = |v: &str| json!({"groupVersion": format!("{g}/{v}"), "version": v});
    json!({
        "name": g,
        "versions": versions.iter().map(|v| entry(v)).collect::<Vec<_>>(),
        "preferredVersion": entry(versions[0]),
    })
}

pub(crate) fn api_group_list() -> Value {
    let groups: Vec<Value> = served_groups()
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn api_group(group: &str) -> Option<Value> {
    let (g, vs) = served_groups().into_iter().find(|(g, _)| *g == group)?;
    let mut d = group_doc(g, &vs);
    d["kind"] = json!("APIGroup");
    d["apiVersion"] = json!("v1");
    Some(d)
}

/// `/api/v1` or `/apis/<g>/<v>` as an APIResourceList; None when the group-version is not
/// served.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = served()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in &rs {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for s in subresources(r) {
            let (g, v, k) = sub_kind(r, s);
            out.push(json!({
                "name": format!("{}/{s}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": g,
                "version": v,
                "kind": k,
                "verbs": sub_verbs(s),
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The review is discoverable (aggregated and legacy) as create-only and cluster-scoped,
    /// and absent from the stored kinds.
    #[test]
    fn self_subject_review_is_discovered_create_only() {
        let agg = aggregated(false);
        let group = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "authentication.k8s.io")
            .expect("group listed");
        let r = &group["versions"][0]["resources"][0];
        assert_eq!(r["resource"], "selfsubjectreviews");
        assert_eq!(r["scope"], "Cluster");
        assert_eq!(r["verbs"], json!(["create"]));
        let legacy = resource_list("authentication.k8s.io", "v1").unwrap();
        assert_eq!(legacy["resources"][0]["kind"], "SelfSubjectReview");
        assert_eq!(legacy["resources"][0]["namespaced"], false);
        assert!(api_group("authentication.k8s.io").is_some());
        assert!(
            kedge_core::resources::by_plural("authentication.k8s.io", "v1", "selfsubjectreviews")
                .is_none()
        );
        // Stored kinds keep every verb.
        let core = resource_list("", "v1").unwrap();
        assert!(core["resources"][0]["verbs"].as_array().unwrap().len() > 1);
    }

    /// batch/v1beta1 is discoverable (so kubectl maps a v1beta1 CronJob manifest), after
    /// batch/v1, which stays preferred.
    #[test]
    fn retired_cronjob_version_is_discovered_after_the_preferred_one() {
        let agg = aggregated(false);
        let batch = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "batch")
            .unwrap();
        let versions: Vec<&str> = batch["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_str().unwrap())
            .collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
        let beta = &batch["versions"][1]["resources"];
        assert_eq!(beta.as_array().unwrap().len(), 1);
        assert_eq!(
            beta[0]["responseKind"],
            json!({"group": "batch", "version": "v1beta1", "kind": "CronJob"})
        );
        assert_eq!(
            beta[0]["subresources"][0]["responseKind"]["version"],
            "v1beta1"
        );
        assert!(beta[0]["categories"].is_null(), "`get all` lists it once");
        let group = api_group("batch").unwrap();
        assert_eq!(group["preferredVersion"]["version"], "v1");
        assert_eq!(group["versions"][1]["groupVersion"], "batch/v1beta1");
        let list = api_group_list();
        let batch = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "batch")
            .unwrap();
        assert_eq!(batch["versions"].as_array().unwrap().len(), 2);
        let legacy = resource_list("batch", "v1beta1").unwrap();
        assert_eq!(legacy["groupVersion"], "batch/v1beta1");
        let names: Vec<&str> = legacy["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["cronjobs", "cronjobs/status"]);
        assert!(resource_list("batch", "v2alpha1").is_none());
    }

    /// `pods/proxy`, `services/proxy` and `nodes/proxy` are listed as kube-apiserver lists
    /// them (legacy and aggregated), with their options kinds and the method verbs.
    #[test]
    fn proxy_subresources_are_discovered() {
        let legacy = resource_list("", "v1").unwrap();
        for (name, kind) in [
            ("pods/proxy", "PodProxyOptions"),
            ("services/proxy", "ServiceProxyOptions"),
            ("nodes/proxy", "NodeProxyOptions"),
        ] {
            let r = legacy["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name)
                .unwrap_or_else(|| panic!("{name} listed"));
            assert_eq!(r["kind"], kind);
            assert_eq!(
                r["verbs"],
                json!(["create", "delete", "get", "patch", "update"])
            );
        }
        let agg = aggregated(true);
        let pods = agg["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert!(
            pods["subresources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["subresource"] == "proxy")
        );
        assert!(
            !legacy["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "configmaps/proxy")
        );
    }
}
