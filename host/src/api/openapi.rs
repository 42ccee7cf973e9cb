//! OpenAPI v3 documents: enough for kubectl to validate server-side.
//!
//! kubectl (1.27+) downloads `/openapi/v3`, and when every Kind it sends has a PATCH operation
//! carrying `x-kubernetes-group-version-kind` and a `fieldValidation` parameter, it skips
//! client-side schema validation and asks the server to validate (`fieldValidation=Strict`),
//! which the write path does against the typed Kubernetes structs. Full schemas (for
//! `kubectl explain`) are a later step and named as missing in the issue note.

use serde_json::{Value, json};

use crate::core::resources::{RESOURCES, Resource, groups};

/// Changes whenever the served documents change, so kubectl's hash-keyed cache refreshes.
fn hash() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for r in RESOURCES {
        h.update(r.api_version().as_bytes());
        h.update(r.kind.as_bytes());
        h.update(r.plural.as_bytes());
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    hex::encode(&h.finalize()[..16])
}

pub fn root() -> Value {
    let h = hash();
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".into(),
        json!({"serverRelativeURL": format!("/openapi/v3/api/v1?hash={h}")}),
    );
    for (g, v) in groups() {
        paths.insert(
            format!("apis/{g}/{v}"),
            json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash={h}")}),
        );
    }
    json!({"paths": paths})
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

/// The document of one group-version (`""` for core).
pub fn group_version(group: &str, version: &str) -> Option<Value> {
    let rs: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in rs {
        let gvk = json!([{"group": r.group, "version": r.version, "kind": r.kind}]);
        let schema_name = format!(
            "io.kedge.{}.{}.{}",
            if r.group.is_empty() { "core" } else { r.group },
            r.version,
            r.kind
        );
        let reference = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        schemas.insert(
            schema_name.clone(),
            json!({
                "type": "object",
                "description": format!("{} ({}). Validated by the server.", r.kind, r.api_version()),
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-preserve-unknown-fields": true,
            }),
        );
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
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}},
            })
        };
        paths.insert(
            item_path(r),
            json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kedge)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
