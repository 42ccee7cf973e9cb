//! OpenAPI v3 documents: the Kubernetes schemas (for `kubectl explain` and for the patch
//! metadata of client-side `kubectl apply`) and the operations that make kubectl validate
//! server-side.
//!
//! kubectl (1.27+) downloads `/openapi/v3`, and when every Kind it sends has a PATCH operation
//! carrying `x-kubernetes-group-version-kind` and a `fieldValidation` parameter, it skips
//! client-side schema validation and asks the server to validate (`fieldValidation=Strict`),
//! which the write path does against the typed Kubernetes structs.
//!
//! The schemas come from k8s-openapi's `schemars` impls, which already carry Kubernetes'
//! definition names (`io.k8s.api.apps.v1.Deployment`) and field descriptions but none of the
//! `x-kubernetes-*` extensions: those are added here. The patch extensions follow
//! [`kedge_core::patch`] rather than upstream, so that the patch kubectl computes is the one
//! this server applies. Everything is built once, on first request, and served as bytes.

use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use kedge_core::patch;
use kedge_core::resources::{self, Resource, Retired, groups};

const REF_PREFIX: &str = "#/components/schemas/";

/// The served documents, serialized once: the root is ~1 kB, a group-version up to a few
/// hundred kB, and kubectl fetches them on every `explain` and `apply`.
struct Documents {
    root: Bytes,
    /// By path below `/openapi/v3/`: `api/v1`, `apis/apps/v1`, ...
    group_versions: Vec<(String, Bytes)>,
}

/// The documents of the served kinds, rebuilt when custom kinds come or go (their hashes
/// change with them, so kubectl's cache refreshes).
static DOCUMENTS: RwLock<Option<(u64, Arc<Documents>)>> = RwLock::new(None);

fn documents() -> Arc<Documents> {
    let generation = resources::generation();
    if let Some((g, d)) = DOCUMENTS.read().unwrap_or_else(|p| p.into_inner()).as_ref()
        && *g == generation
    {
        return d.clone();
    }
    let built = Arc::new(build());
    *DOCUMENTS.write().unwrap_or_else(|p| p.into_inner()) = Some((generation, built.clone()));
    built
}

/// `/openapi/v3`: every group-version with a content hash, which kubectl caches by.
pub fn root() -> Bytes {
    documents().root.clone()
}

/// The document of one group-version (`""` for core).
pub(crate) fn group_version(group: &str, version: &str) -> Option<Bytes> {
    let path = gv_path(group, version);
    documents()
        .group_versions
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, doc)| doc.clone())
}

/// A served document as a response, without re-serializing it.
pub fn response(doc: Bytes) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc,
    )
        .into_response()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Changes whenever the document changes, so kubectl's hash-keyed cache refreshes.
fn hash(doc: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode_upper(Sha256::digest(doc))
}

fn build() -> Documents {
    let (schemas, kinds) = schemas();
    let mut gvs = vec![("", "v1")];
    gvs.extend(groups());
    for r in resources::all_retired() {
        let gv = (r.resource.group, r.resource.version);
        if !gvs.contains(&gv) {
            gvs.push(gv);
        }
    }
    let mut paths = Map::new();
    let mut group_versions = Vec::new();
    for (group, version) in gvs {
        let Some(doc) = document(group, version, &schemas, &kinds) else {
            continue;
        };
        let bytes = serde_json::to_vec(&doc).expect("a JSON value serializes");
        let path = gv_path(group, version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash(&bytes))}),
        );
        group_versions.push((path, Bytes::from(bytes)));
    }
    let root = serde_json::to_vec(&json!({ "paths": paths })).expect("serializes");
    Documents {
        root: Bytes::from(root),
        group_versions,
    }
}

/// Registers the Kubernetes type of a served kind; returns its definition name.
fn register(generator: &mut SchemaGenerator, r: &Resource) -> Option<String> {
    let typed = crate::kinds::version_typed(r).or_else(|| crate::kinds::rules(r).typed())?;
    Some(typed.register(generator))
}

/// All definitions, post-processed, and the definition name of each served kind that has one.
fn schemas() -> (Map<String, Value>, Vec<(&'static Resource, String)>) {
    // OpenAPI 3.0 shape: `#/components/schemas/` refs, a ref with siblings (a field's own
    // description) wrapped in `allOf` as kube-apiserver does.
    let mut generator = SchemaSettings::openapi3()
        .with(|s| s.meta_schema = None)
        .into_generator();
    // Retired versions of another shape than their stored one have a schema of their own.
    let own_shape = resources::all_retired()
        .into_iter()
        .map(|r| &r.resource)
        .filter(|r| crate::kinds::version_typed(r).is_some());
    let kinds: Vec<(&Resource, String)> = resources::all()
        .into_iter()
        .chain(own_shape)
        .filter_map(|r| register(&mut generator, r).map(|name| (r, name)))
        .collect();
    let mut defs = generator.take_definitions(true);
    for (name, schema) in defs.iter_mut() {
        fix_scalar(name, schema);
    }
    // Whether a list is keyed depends on its items' schema: decide on a snapshot.
    let snapshot = defs.clone();
    for schema in defs.values_mut() {
        add_patch_extensions(schema, &snapshot);
    }
    for (r, name) in &kinds {
        if let Some(Value::Object(o)) = defs.get_mut(name) {
            // k8s-openapi's `metadata` is not optional in Rust, so its schema requires it;
            // Kubernetes does not (generateName, namespace from context).
            if let Some(Value::Array(required)) = o.get_mut("required") {
                required.retain(|f| f != "metadata");
                if required.is_empty() {
                    o.remove("required");
                }
            }
            o.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "kind": r.kind, "version": r.version}]),
            );
        }
    }
    let mut kinds = kinds;
    for r in resources::all_retired() {
        if crate::kinds::version_typed(&r.resource).is_some() {
            continue;
        }
        if let Some((name, schema)) = retired_schema(r, &defs, &kinds) {
            defs.insert(name.clone(), schema);
            kinds.push((&r.resource, name));
        }
    }
    (defs, kinds)
}

/// A retired version's definition: its stored kind's, under the retired version's name and
/// group-version-kind. Its fields refer to the stored version's definitions, which have the
/// same shape: a retired version is served only where its conversion keeps the shape (see
/// [`Retired`]), so kubectl validates and computes patches against what is stored.
fn retired_schema(
    r: &Retired,
    defs: &Map<String, Value>,
    kinds: &[(&Resource, String)],
) -> Option<(String, Value)> {
    let stored = r.stored();
    let (_, stored_name) = kinds.iter().find(|(k, _)| std::ptr::eq(*k, stored))?;
    let mut schema = defs.get(stored_name)?.clone();
    let suffix = format!(".{}.{}", stored.version, stored.kind);
    let name = match stored_name.strip_suffix(&suffix) {
        Some(package) => format!("{package}.{}.{}", r.resource.version, r.resource.kind),
        None => format!(
            "io.kedge.{}.{}.{}",
            group_or_core(&r.resource),
            r.resource.version,
            r.resource.kind
        ),
    };
    let o = schema.as_object_mut()?;
    o.insert(
        "x-kubernetes-group-version-kind".into(),
        json!([{"group": r.resource.group, "kind": r.resource.kind, "version": r.resource.version}]),
    );
    let description = o.get("description").and_then(Value::as_str).unwrap_or("");
    o.insert(
        "description".into(),
        json!(match r.warning() {
            Some(w) => format!("{description}\n\nDeprecated: {w}."),
            None => description.to_string(),
        }),
    );
    Some((name, schema))
}

/// k8s-openapi types IntOrString and Quantity only with `x-kubernetes-int-or-string`; give them
/// the types kube-apiserver's v3 documents have, which kubectl explain prints.
fn fix_scalar(name: &str, schema: &mut Value) {
    let Value::Object(o) = schema else { return };
    match name {
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            o.insert("format".into(), json!("int-or-string"));
            o.insert(
                "oneOf".into(),
                json!([{"type": "integer"}, {"type": "string"}]),
            );
        }
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => {
            o.insert(
                "oneOf".into(),
                json!([{"type": "string"}, {"type": "number"}]),
            );
        }
        _ => {}
    }
}

/// The definition a (possibly `allOf`-wrapped) `$ref` schema points to.
fn ref_name(schema: &Value) -> Option<&str> {
    let r = schema
        .get("$ref")
        .or_else(|| schema.get("allOf")?.get(0)?.get("$ref"))?;
    r.as_str()?.strip_prefix(REF_PREFIX)
}

/// `x-kubernetes-patch-merge-key` / `-strategy` and `x-kubernetes-list-type` / `-map-keys` on
/// the lists [`patch::strategic_merge`] merges by key or as a set.
fn add_patch_extensions(schema: &mut Value, defs: &Map<String, Value>) {
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for (field, prop) in props.iter_mut() {
        if prop.get("type").and_then(Value::as_str) != Some("array") {
            continue;
        }
        let Some(items) = prop.get("items") else {
            continue;
        };
        let ext = if patch::is_set_list(field) {
            json!({"x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"})
        } else {
            let item_props = ref_name(items)
                .and_then(|n| defs.get(n))
                .and_then(|d| d.get("properties"))
                .and_then(Value::as_object);
            let Some(item_props) = item_props else {
                continue;
            };
            // patch.rs tells container ports from service ports by their items.
            let hint: Vec<Value> = if item_props.contains_key("containerPort") {
                vec![json!({"containerPort": 0})]
            } else {
                Vec::new()
            };
            match patch::merge_key(field, &hint) {
                Some(key) if item_props.contains_key(key) => json!({
                    "x-kubernetes-list-map-keys": [key],
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-patch-merge-key": key,
                    "x-kubernetes-patch-strategy": "merge",
                }),
                _ => continue,
            }
        };
        if let (Value::Object(p), Value::Object(e)) = (prop, ext) {
            p.extend(e);
        }
    }
}

/// Every definition name `$ref`ed from `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (
                    k.as_str(),
                    x.as_str().and_then(|s| s.strip_prefix(REF_PREFIX)),
                ) {
                    ("$ref", Some(name)) => out.push(name.to_string()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

fn item_path(r: &Resource) -> String {
    let base = if r.group.is_empty() {
        "/api/v1".to_string()
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

/// The document of one group-version: its kinds' operations and every schema they reach.
fn document(
    group: &str,
    version: &str,
    defs: &Map<String, Value>,
    kinds: &[(&Resource, String)],
) -> Option<Value> {
    let rs: Vec<&Resource> = resources::all()
        .into_iter()
        .chain(resources::all_retired().into_iter().map(|r| &r.resource))
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut pending = Vec::new();
    for r in rs {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let schema_name = match kinds.iter().find(|(k, _)| std::ptr::eq(*k, r)) {
            Some((_, name)) => {
                pending.push(name.clone());
                name.clone()
            }
            // A kind without a Kubernetes type: an open schema, validated by the server.
            None => {
                let name = format!("io.kedge.{}.{}.{}", group_or_core(r), r.version, r.kind);
                schemas.insert(
                    name.clone(),
                    json!({
                        "type": "object",
                        "description": format!("{} ({}). Validated by the server.", r.kind, r.api_version()),
                        "x-kubernetes-group-version-kind": [gvk],
                        "x-kubernetes-preserve-unknown-fields": true,
                    }),
                );
                name
            }
        };
        let reference = json!({"$ref": format!("{REF_PREFIX}{schema_name}")});
        let params = json!([
            {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
            {"name": "namespace", "in": "path", "required": r.namespaced, "schema": {"type": "string"}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let op = |verb: &str| {
            json!({
                "operationId": format!("{verb}{}", r.kind),
                "parameters": params,
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
            })
        };
        // The patch types accepted: with strategic merge listed, client-side `kubectl apply`
        // computes its patch from these schemas (the patch extensions above) instead of
        // falling back to `/openapi/v2` and its compiled-in Go structs.
        let mut patch_op = op("patch");
        let body = json!({"schema": {"type": "object"}});
        patch_op["requestBody"] = json!({
            "required": true,
            "content": {
                "application/apply-patch+yaml": body,
                "application/json-patch+json": body,
                "application/merge-patch+json": body,
                "application/strategic-merge-patch+json": body,
            },
        });
        paths.insert(
            item_path(r),
            json!({"get": op("get"), "put": op("put"), "patch": patch_op, "delete": op("delete")}),
        );
    }
    // The closure over `$ref`s: kubectl resolves them within this document only.
    while let Some(name) = pending.pop() {
        if schemas.contains_key(&name) {
            continue;
        }
        let Some(schema) = defs.get(&name) else {
            continue;
        };
        let mut next = Vec::new();
        refs(schema, &mut next);
        pending.extend(next);
        schemas.insert(name, schema.clone());
    }
    // Stable order, so the hash only changes with the content.
    let schemas: Map<String, Value> = schemas
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kedge)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn group_or_core(r: &Resource) -> &'static str {
    if r.group.is_empty() { "core" } else { r.group }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `$ref`s a document cannot resolve itself.
    fn dangling(doc: &Value) -> Vec<String> {
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut all = Vec::new();
        refs(doc, &mut all);
        all.retain(|n| !schemas.contains_key(n));
        all
    }

    fn doc(group: &str, version: &str) -> Value {
        serde_json::from_slice(&group_version(group, version).unwrap()).unwrap()
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        let s = &doc["components"]["schemas"][name];
        assert!(s.is_object(), "{name} is defined");
        s
    }

    #[test]
    fn deployment_spec_replicas_is_a_documented_integer() {
        let apps = doc("apps", "v1");
        let deploy = schema(&apps, "io.k8s.api.apps.v1.Deployment");
        assert_eq!(
            ref_name(&deploy["properties"]["spec"]),
            Some("io.k8s.api.apps.v1.DeploymentSpec")
        );
        let replicas =
            &schema(&apps, "io.k8s.api.apps.v1.DeploymentSpec")["properties"]["replicas"];
        assert_eq!(replicas["type"], "integer");
        assert_eq!(replicas["format"], "int32");
        assert!(
            replicas["description"]
                .as_str()
                .unwrap()
                .contains("Number of desired pods")
        );
        // Types from other packages carry their Go package path.
        for name in [
            "io.k8s.api.core.v1.PodTemplateSpec",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
            "io.k8s.apimachinery.pkg.api.resource.Quantity",
        ] {
            schema(&apps, name);
        }
    }

    #[test]
    fn keyed_lists_carry_the_merge_keys_patch_rs_uses() {
        let core = doc("", "v1");
        let field = |def: &str, f: &str| schema(&core, def)["properties"][f].clone();
        let key = |def: &str, f: &str| field(def, f)["x-kubernetes-patch-merge-key"].clone();
        let containers = field("io.k8s.api.core.v1.PodSpec", "containers");
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        assert_eq!(containers["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(key("io.k8s.api.core.v1.PodSpec", "volumes"), "name");
        assert_eq!(key("io.k8s.api.core.v1.Container", "env"), "name");
        assert_eq!(
            key("io.k8s.api.core.v1.Container", "ports"),
            "containerPort"
        );
        assert_eq!(
            key("io.k8s.api.core.v1.Container", "volumeMounts"),
            "mountPath"
        );
        assert_eq!(key("io.k8s.api.core.v1.ServiceSpec", "ports"), "port");
        assert_eq!(key("io.k8s.api.core.v1.PodStatus", "conditions"), "type");
        assert_eq!(
            key(
                "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                "ownerReferences"
            ),
            "uid"
        );
        let finalizers = field(
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "finalizers",
        );
        assert_eq!(finalizers["x-kubernetes-list-type"], "set");
        // Atomic lists stay unannotated.
        assert!(field("io.k8s.api.core.v1.Container", "args")["x-kubernetes-list-type"].is_null());
    }

    #[test]
    fn every_served_kind_has_a_typed_schema_with_its_gvk_and_a_patch_operation() {
        for r in resources::RESOURCES
            .iter()
            .chain(resources::RETIRED.iter().map(|r| &r.resource))
        {
            let d = doc(r.group, r.version);
            let gvk = json!({"group": r.group, "kind": r.kind, "version": r.version});
            let schemas = d["components"]["schemas"].as_object().unwrap();
            let (name, s) = schemas
                .iter()
                .find(|(_, s)| {
                    s["x-kubernetes-group-version-kind"]
                        .as_array()
                        .is_some_and(|a| a.contains(&gvk))
                })
                .unwrap_or_else(|| panic!("{} has a schema", r.kind));
            assert!(
                name.starts_with("io.k8s.") || name.starts_with("io.kedge."),
                "{name}"
            );
            assert!(s["properties"]["metadata"].is_object(), "{name} is typed");
            assert!(s["description"].is_string(), "{name} is documented");
            assert!(
                s["required"]
                    .as_array()
                    .is_none_or(|a| !a.contains(&json!("metadata"))),
                "{name}: metadata is optional"
            );
            let patch = &d["paths"][item_path(r)]["patch"];
            assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], r.kind);
            assert!(
                patch["requestBody"]["content"]["application/strategic-merge-patch+json"]
                    .is_object(),
                "{}: kubectl apply computes strategic merge patches from the schema",
                r.kind
            );
            assert!(
                patch["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["name"] == "fieldValidation"),
                "{} keeps server-side validation",
                r.kind
            );
        }
    }

    #[test]
    fn documents_are_self_contained_and_listed_with_their_hash() {
        let root: Value = serde_json::from_slice(&root()).unwrap();
        let paths = root["paths"].as_object().unwrap();
        // Core, the named groups, batch/v1beta1 (a retired version) and autoscaling/v1 (served
        // beside v2).
        assert_eq!(paths.len(), groups().len() + 3);
        for (path, entry) in paths {
            let (group, version) = match path.split('/').collect::<Vec<_>>()[..] {
                ["api", v] => ("", v),
                ["apis", g, v] => (g, v),
                _ => panic!("{path}"),
            };
            let bytes = group_version(group, version).unwrap();
            let url = entry["serverRelativeURL"].as_str().unwrap();
            assert_eq!(url, format!("/openapi/v3/{path}?hash={}", hash(&bytes)));
            let d: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(dangling(&d).is_empty(), "{path}: {:?}", dangling(&d));
        }
        assert!(group_version("apps", "v2").is_none());
    }

    /// kubectl apply of a batch/v1beta1 CronJob validates server-side and computes its patch
    /// from this document: a PATCH operation with the v1beta1 kind, and a schema with the
    /// v1beta1 GVK whose fields are the stored version's.
    #[test]
    fn retired_cronjob_version_has_its_own_document() {
        let d = doc("batch", "v1beta1");
        let cj = schema(&d, "io.k8s.api.batch.v1beta1.CronJob");
        assert_eq!(
            cj["x-kubernetes-group-version-kind"],
            json!([{"group": "batch", "kind": "CronJob", "version": "v1beta1"}])
        );
        assert!(
            cj["description"]
                .as_str()
                .unwrap()
                .ends_with("use batch/v1 CronJob.")
        );
        assert_eq!(
            ref_name(&cj["properties"]["spec"]),
            Some("io.k8s.api.batch.v1.CronJobSpec")
        );
        let patch =
            &d["paths"]["/apis/batch/v1beta1/namespaces/{namespace}/cronjobs/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["version"],
            "v1beta1"
        );
        // The stored version's document is unchanged: its kind keeps its own GVK.
        let v1 = doc("batch", "v1");
        assert_eq!(
            schema(&v1, "io.k8s.api.batch.v1.CronJob")["x-kubernetes-group-version-kind"][0]["version"],
            "v1"
        );
        assert!(v1["components"]["schemas"]["io.k8s.api.batch.v1beta1.CronJob"].is_null());
    }
}
