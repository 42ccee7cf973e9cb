//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): users' own kinds, served as soon as
//! their definition is stored and its names accepted.
//!
//! A definition's rules (checks, defaults, its own status) are in [`crate::kinds`]; this module
//! is what the definition does to the server:
//! - [`sync`], called after every stored write of a definition (and for each at start,
//!   [`load`]), registers its kind in the resource table (`kedge_core::resources`) with its
//!   [`Custom`] rules, so routing, discovery, OpenAPI, Tables, the store's informers and plugin
//!   permissions see it; re-registers it when the definition changes; and takes it away when
//!   the definition is gone.
//! - A definition being deleted holds the `customresourcecleanup.apiextensions.k8s.io`
//!   finalizer until every object of its kind is gone: [`sync`] deletes them (each through the
//!   normal delete, so their own finalizers and dependents are honoured), refuses new ones,
//!   and drops the finalizer when the last one goes ([`after_object_write`] notices it).
//! - [`Custom`] is a served kind's [`KindRules`]: the version's structural schema prunes
//!   (the typed decode, so `fieldValidation` reports unknown fields as for built-in kinds),
//!   defaults and validates every write ([`kedge_core::crd_schema`]); the `status` and `scale`
//!   subresources; `additionalPrinterColumns` in Tables.
//!
//! Versions: the storage version is the kind's row; every other served version is served as
//! a view of it (the `None` conversion strategy: only `apiVersion` changes), which is why the
//! definition's checks require every served version to share the storage version's schema,
//! subresources and columns.
//!
//! The registrations are the process's, like the resource table they extend (one process
//! serves one cluster). Servers sharing a store (several replicas) would each need to follow
//! the definitions by watch; one server learns of its own writes here.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::schemars::generate::SchemaGenerator;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::kinds::table_fmt::{self, Column};
use crate::kinds::{KindRules, Typed};
use crate::ops::{Api, DeleteOptions, ListOptions, WriteOptions};
use kedge_core::crd_schema::{self, ListType, MapType, Schema};
use kedge_core::meta;
use kedge_core::resources::{self, CustomKind, Deprecation, Resource, Retired};

pub(crate) const GROUP: &str = "apiextensions.k8s.io";
/// Held by every definition until its objects are gone.
pub(crate) const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The definition kind's row.
pub(crate) fn definitions() -> &'static Resource {
    resources::by_kind("apiextensions.k8s.io/v1", "CustomResourceDefinition")
        .expect("definitions are served")
}

/// What a served custom kind is beyond its row.
pub(crate) struct Custom {
    /// The definition's name (`widgets.example.com`).
    pub crd: String,
    schema: Schema,
    typed: &'static CustomTyped,
    columns: &'static [Column],
    /// Per column after Name: where its cell comes from.
    cells: Vec<Cell>,
    status: bool,
    scale: Option<ScalePaths>,
    /// The definition is being deleted: no new objects.
    terminating: AtomicBool,
    /// Of the definition's spec and accepted names: a write that changes neither (labels,
    /// annotations, status) re-registers nothing.
    fingerprint: u64,
}

/// The `scale` subresource's paths, as JSON pointers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

struct Cell {
    path: JsonPath,
    ty: &'static str,
}

/// The served custom kinds and their rules.
static SERVED: RwLock<Vec<(&'static Resource, &'static Custom)>> = RwLock::new(Vec::new());

fn served() -> std::sync::RwLockReadGuard<'static, Vec<(&'static Resource, &'static Custom)>> {
    SERVED.read().unwrap_or_else(|p| p.into_inner())
}

/// The rules of a served custom kind.
pub(crate) fn custom(res: &Resource) -> Option<&'static Custom> {
    let s = served();
    s.iter()
        .find(|(r, _)| std::ptr::eq(*r, res))
        .or_else(|| {
            s.iter()
                .find(|(r, _)| r.group == res.group && r.plural == res.plural)
        })
        .map(|(_, c)| *c)
}

/// The list type of the array at `path` of a custom kind's objects (server-side apply).
pub(crate) fn list_type_at(res: &Resource, path: &[&str]) -> Option<ListType> {
    custom(res)?.schema.list_type_at(path)
}

/// The map type of the object at `path` of a custom kind's objects (server-side apply).
pub(crate) fn map_type_at(res: &Resource, path: &[&str]) -> Option<MapType> {
    custom(res)?.schema.map_type_at(path)
}

/// Refuses a new object of a kind whose definition is being deleted, as kube-apiserver does.
pub(crate) fn check_create(res: &Resource) -> Result<(), ApiError> {
    match custom(res) {
        Some(c) if c.terminating.load(Ordering::Relaxed) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "create not allowed while custom resource definition is terminating",
        )),
        _ => check_served(res),
    }
}

/// A write of a custom kind is checked by its definition's rules or not done: a request
/// routed just as its kind stopped being served (or before its rules were in place) gets the
/// 404 a later one would, never a write without validation.
pub(crate) fn check_served(res: &Resource) -> Result<(), ApiError> {
    if resources::is_custom(res) && custom(res).is_none() {
        return Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    Ok(())
}

/// The `scale` paths of a kind: custom kinds' from their definition, `None` for a custom kind
/// without the subresource; built-in kinds use `spec.replicas` / `status.replicas`.
pub(crate) fn scale_paths(res: &Resource) -> Option<ScalePaths> {
    if !resources::is_custom(res) {
        return Some(ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        });
    }
    custom(res)?.scale.clone()
}

/// Registers every stored definition (server start) and resumes the cleanup of those being
/// deleted.
pub fn load(api: &Api) -> Result<(), ApiError> {
    let list = api.list(definitions(), "", &ListOptions::default())?;
    for d in list["items"].as_array().into_iter().flatten() {
        sync(api, meta::name(d));
    }
    Ok(())
}

/// After a stored write of the definition `name`: serve, re-serve or stop serving its kind,
/// and delete the objects of a definition being deleted.
pub(crate) fn sync(api: &Api, name: &str) {
    let crd = match api.get_if_exists(definitions(), "", name) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(crd = name, error = %e, "reading a CustomResourceDefinition failed");
            return;
        }
    };
    let Some(crd) = crd else {
        if let Some((plural, group)) = name.split_once('.') {
            unregister(group, plural);
        }
        return;
    };
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        cleanup(api, &crd);
        return;
    }
    // One registration at a time, from the definition as stored now: two writes' syncs
    // racing cannot leave the older one served.
    let _one = REGISTERING.lock().unwrap_or_else(|p| p.into_inner());
    let crd = match api.get_if_exists(definitions(), "", name) {
        Ok(Some(c)) if c.pointer("/metadata/deletionTimestamp").is_none() => c,
        _ => return,
    };
    if established(&crd) {
        register(&crd);
    } else if let (Some(g), Some(p)) = (
        crd.pointer("/spec/group").and_then(Value::as_str),
        crd.pointer("/spec/names/plural").and_then(Value::as_str),
    ) {
        unregister(g, p);
    }
}

static REGISTERING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fingerprint(crd: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    crd["spec"].to_string().hash(&mut h);
    crd["status"]["acceptedNames"].to_string().hash(&mut h);
    h.finish()
}

/// After a stored write of a custom object: when its definition is being deleted and this was
/// the last object, the definition lets go of its finalizer.
pub(crate) fn after_object_write(api: &Api, res: &'static Resource) {
    let Some(c) = custom(res) else { return };
    if !c.terminating.load(Ordering::Relaxed) || any_left(api, res) {
        return;
    }
    finalize(api, &c.crd);
}

fn any_left(api: &Api, res: &Resource) -> bool {
    let prefix = kedge_store::prefix(res.group, res.plural, "");
    let mut found = false;
    let scan = api.store().scan(&prefix, None, &mut |_, _| {
        found = true;
        Ok(false)
    });
    found || scan.is_err()
}

fn cleanup(api: &Api, crd: &Value) {
    let name = meta::name(crd).to_string();
    let served = || {
        let (group, plural) = (
            crd.pointer("/spec/group").and_then(Value::as_str)?,
            crd.pointer("/status/acceptedNames/plural")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())?,
        );
        resources::by_group_plural(group, plural).filter(|r| resources::is_custom(r))
    };
    let mut res = served();
    if res.is_none() && established(crd) {
        // Deleted while this server was down (or before a restart finished the cleanup): the
        // kind is served again, terminating, so its objects are found and deleted.
        register(crd);
        res = served();
    }
    let Some(res) = res else {
        // Never served (names not accepted): nothing of its kind can exist.
        finalize(api, &name);
        return;
    };
    if let Some(c) = custom(res) {
        c.terminating.store(true, Ordering::Relaxed);
    }
    // Twice: a create that passed its check just before the definition turned terminating
    // may be stored after the first listing.
    for _pass in 0..2 {
        delete_all(api, res, &name);
    }
    if !any_left(api, res) {
        finalize(api, &name);
    }
}

/// Deletes every object of `res` not already being deleted.
fn delete_all(api: &Api, res: &'static Resource, name: &str) {
    match api.list(res, "", &ListOptions::default()) {
        Ok(list) => {
            for o in list["items"].as_array().into_iter().flatten() {
                if o.pointer("/metadata/deletionTimestamp").is_some() {
                    continue;
                }
                let (ns, n) = (meta::namespace(o), meta::name(o));
                match api.delete(res, ns, n, &DeleteOptions::default()) {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(crd = %name, object = n, error = %e, "deleting a custom object failed")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(crd = %name, error = %e, "listing custom objects failed"),
    }
}

/// Drops the cleanup finalizer of a definition being deleted (which removes it when it was
/// the last one). The update's own [`sync`] then stops serving the kind once the definition
/// is gone; a definition held by other finalizers stays served, terminating, until they go.
fn finalize(api: &Api, name: &str) {
    for _ in 0..8 {
        let Ok(Some(mut crd)) = api.get_if_exists(definitions(), "", name) else {
            break;
        };
        let mut finalizers = meta::finalizers(&crd);
        if !finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            break;
        }
        finalizers.retain(|f| f != CLEANUP_FINALIZER);
        crd["metadata"]["finalizers"] = json!(finalizers);
        match api.update(definitions(), "", name, crd, None, &WriteOptions::default()) {
            Ok(_) => break,
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => {
                tracing::warn!(crd = name, error = %e, "finalizing a CustomResourceDefinition failed");
                break;
            }
        }
    }
}

fn established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Established" && c["status"] == "True")
}

pub(crate) fn unregister(group: &str, plural: &str) {
    resources::unregister_custom(group, plural);
    SERVED
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(r, _)| !(r.group == group && r.plural == plural));
}

/// Serves the kind of a valid, established definition.
fn register(crd: &Value) {
    let fingerprint = fingerprint(crd);
    if served()
        .iter()
        .any(|(_, c)| c.crd == meta::name(crd) && c.fingerprint == fingerprint)
    {
        // Nothing it serves changed (the registry's rows are leaked: not again).
        return;
    }
    let d = match Definition::of(crd) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(crd = meta::name(crd), error = %e, "not serving a CustomResourceDefinition");
            return;
        }
    };
    let Some(storage) = d.versions.iter().find(|v| v.storage) else {
        return;
    };
    let schema = match Schema::parse(&storage.schema) {
        Ok(s) => s,
        Err(causes) => {
            tracing::warn!(crd = meta::name(crd), causes = ?causes, "not serving a CustomResourceDefinition");
            return;
        }
    };
    let row = |version: &str, categories: bool| Resource {
        group: resources::leak(&d.group),
        version: resources::leak(version),
        kind: resources::leak(&d.kind),
        plural: resources::leak(&d.plural),
        singular: resources::leak(&d.singular),
        namespaced: d.namespaced,
        short_names: resources::leak_list(&d.short_names),
        categories: if categories {
            resources::leak_list(&d.categories)
        } else {
            &[]
        },
        subresources: match (storage.status, storage.scale.is_some()) {
            (true, true) => &["status", "scale"],
            (true, false) => &["status"],
            (false, true) => &["scale"],
            (false, false) => &[],
        },
        field_selectors: &[],
    };
    let views: Vec<Retired> = d
        .versions
        .iter()
        .filter(|v| v.served && !v.storage)
        .map(|v| Retired {
            resource: row(&v.name, false),
            replacement: resources::leak(&storage.name),
            deprecation: match (v.deprecated, &v.deprecation_warning) {
                (false, _) => Deprecation::Current,
                (true, w) => Deprecation::Deprecated(w.as_deref().map(resources::leak)),
            },
            up: same_shape,
            down: same_shape,
        })
        .collect();
    let stored = resources::register_custom(CustomKind {
        stored: row(&storage.name, true),
        views,
    });
    let mut columns = vec![table_fmt::col("Name", "string", 0)];
    let mut cells = Vec::new();
    for c in &storage.columns {
        columns.push(table_fmt::col(
            resources::leak(&c.name),
            resources::leak(&c.ty),
            c.priority.clamp(0, u8::MAX as i64) as u8,
        ));
        cells.push(Cell {
            path: c.path.clone(),
            ty: resources::leak(&c.ty),
        });
    }
    let typed: &'static CustomTyped = Box::leak(Box::new(CustomTyped {
        schema: schema.clone(),
        openapi: storage.schema.clone(),
        group: d.group.clone(),
        version: storage.name.clone(),
        kind: d.kind.clone(),
    }));
    let custom: &'static Custom = Box::leak(Box::new(Custom {
        crd: meta::name(crd).to_string(),
        schema,
        typed,
        columns: Box::leak(columns.into_boxed_slice()),
        cells,
        status: storage.status,
        scale: storage.scale.clone(),
        terminating: AtomicBool::new(false),
        fingerprint,
    }));
    let mut s = SERVED.write().unwrap_or_else(|p| p.into_inner());
    s.retain(|(r, _)| !(r.group == stored.group && r.plural == stored.plural));
    s.push((stored, custom));
}

/// The `None` conversion strategy: only `apiVersion` changes, which the view does itself.
fn same_shape(_: &mut Value) -> Result<(), String> {
    Ok(())
}

/// The names a definition asks for (`spec.names`), as `status.acceptedNames` shows them.
pub(crate) fn accepted_names(spec: &Value) -> Value {
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default();
    let mut out = json!({
        "plural": names["plural"],
        "singular": names.get("singular").cloned().unwrap_or_else(|| json!(kind.to_lowercase())),
        "kind": kind,
        "listKind": names.get("listKind").cloned().unwrap_or_else(|| json!(format!("{kind}List"))),
    });
    for k in ["shortNames", "categories"] {
        if let Some(v) = names
            .get(k)
            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        {
            out[k] = v.clone();
        }
    }
    out
}

/// Why the names of the definition `name` cannot be accepted: another definition of the same
/// group already serves one of them (kube's NamesAccepted condition: reason and message).
pub(crate) fn names_conflict(name: &str, spec: &Value) -> Option<(&'static str, String)> {
    let group = spec["group"].as_str()?;
    let names = accepted_names(spec);
    let mine = |k: &str| names[k].as_str().unwrap_or_default().to_string();
    let shorts: Vec<String> = names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    for (r, c) in served().iter() {
        if r.group != group || c.crd == name {
            continue;
        }
        if r.kind == mine("kind") || r.list_kind() == mine("kind") {
            return Some((
                "KindConflict",
                format!("{:?} is already in use", mine("kind")),
            ));
        }
        if r.kind == mine("listKind") || r.list_kind() == mine("listKind") {
            return Some((
                "ListKindConflict",
                format!("{:?} is already in use", mine("listKind")),
            ));
        }
        if r.singular == mine("singular") || r.plural == mine("singular") {
            return Some((
                "SingularConflict",
                format!("{:?} is already in use", mine("singular")),
            ));
        }
        if let Some(s) = shorts
            .iter()
            .find(|s| r.short_names.contains(&s.as_str()) || r.plural == s.as_str())
        {
            return Some(("ShortNamesConflict", format!("{s:?} is already in use")));
        }
    }
    None
}

/// A definition's spec, read after its checks passed.
pub(crate) struct Definition {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub namespaced: bool,
    pub versions: Vec<Version>,
}

pub(crate) struct Version {
    pub name: String,
    pub served: bool,
    pub storage: bool,
    pub deprecated: bool,
    pub deprecation_warning: Option<String>,
    pub schema: Value,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    pub columns: Vec<PrinterColumn>,
}

pub(crate) struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub priority: i64,
    pub path: JsonPath,
}

impl Definition {
    pub(crate) fn of(crd: &Value) -> Result<Definition, String> {
        let spec = &crd["spec"];
        // The names the definition was accepted under: a later change to `spec.names` that
        // conflicts with another definition is not served (NamesAccepted=False), as in kube.
        let names = match crd.pointer("/status/acceptedNames") {
            Some(n) if n["plural"].as_str().is_some_and(|p| !p.is_empty()) => n.clone(),
            _ => accepted_names(spec),
        };
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let list_of = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        };
        let mut versions = Vec::new();
        for v in spec["versions"].as_array().into_iter().flatten() {
            let mut columns = Vec::new();
            for c in v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
            {
                columns.push(PrinterColumn {
                    name: str_of(&c["name"]),
                    ty: str_of(&c["type"]),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    path: JsonPath::parse(c["jsonPath"].as_str().unwrap_or_default())?,
                });
            }
            let scale = v.pointer("/subresources/scale").map(|s| ScalePaths {
                spec_replicas: pointer_of(s["specReplicasPath"].as_str().unwrap_or_default()),
                status_replicas: pointer_of(s["statusReplicasPath"].as_str().unwrap_or_default()),
                label_selector: s["labelSelectorPath"].as_str().map(pointer_of),
            });
            versions.push(Version {
                name: str_of(&v["name"]),
                served: v["served"].as_bool().unwrap_or(false),
                storage: v["storage"].as_bool().unwrap_or(false),
                deprecated: v["deprecated"].as_bool().unwrap_or(false),
                deprecation_warning: v["deprecationWarning"].as_str().map(String::from),
                schema: v
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or(Value::Null),
                status: v.pointer("/subresources/status").is_some(),
                scale,
                columns,
            });
        }
        Ok(Definition {
            group: str_of(&spec["group"]),
            plural: str_of(&names["plural"]),
            singular: str_of(&names["singular"]),
            kind: str_of(&names["kind"]),
            short_names: list_of(&names["shortNames"]),
            categories: list_of(&names["categories"]),
            namespaced: spec["scope"] == "Namespaced",
            versions,
        })
    }
}

/// `.spec.replicas` → `/spec/replicas` (the scale paths are plain dotted paths; checked when
/// the definition is written).
fn pointer_of(path: &str) -> String {
    path.split('.')
        .filter(|s| !s.is_empty())
        .fold(String::new(), |mut out, s| {
            out.push('/');
            out.push_str(s);
            out
        })
}

/// The JSONPath of a printer column: fields (`.spec.x`, `['a.b']`), indexes (`[0]`) and
/// equality filters (`[?(@.type=="Ready")]`, the first match, as kube's Table shows one
/// value), the subset kedge evaluates; anything else is refused when the definition is
/// written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct JsonPath(Vec<Step>);

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    /// `[?(@.type=="Ready")]`: the first item whose field (dotted) equals the string.
    Equals(Vec<String>, String),
}

impl JsonPath {
    pub(crate) fn parse(text: &str) -> Result<JsonPath, String> {
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        if !inner.starts_with('.') {
            return Err("must be a simple json path starting with .".into());
        }
        let unsupported = || {
            "kedge evaluates JSONPaths of fields, indexes and equality filters only (.a.b, \
             .a[0], ['a.b'], [?(@.type==\"Ready\")])"
                .to_string()
        };
        let b = inner.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'.' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < b.len() && b[end] != b'.' && b[end] != b'[' {
                        end += 1;
                    }
                    let field = &inner[start..end];
                    if field.is_empty()
                        || !field
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(unsupported());
                    }
                    steps.push(Step::Field(field.to_string()));
                    i = end;
                }
                b'[' if inner[i..].starts_with("[?(") => {
                    let close = inner[i..].find(")]").ok_or_else(unsupported)? + i;
                    let body = &inner[i + 3..close];
                    let (lhs, rhs) = body.split_once("==").ok_or_else(unsupported)?;
                    let field: Vec<String> = lhs
                        .trim()
                        .strip_prefix("@.")
                        .ok_or_else(unsupported)?
                        .split('.')
                        .map(String::from)
                        .collect();
                    let rhs = rhs.trim();
                    let value = rhs
                        .strip_prefix('"')
                        .and_then(|r| r.strip_suffix('"'))
                        .or_else(|| rhs.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                        .ok_or_else(unsupported)?;
                    if field.iter().any(|f| f.is_empty()) {
                        return Err(unsupported());
                    }
                    steps.push(Step::Equals(field, value.to_string()));
                    i = close + 2;
                }
                b'[' => {
                    let close = inner[i..].find(']').ok_or_else(unsupported)? + i;
                    let body = &inner[i + 1..close];
                    if let Ok(n) = body.parse::<usize>() {
                        steps.push(Step::Index(n));
                    } else if let Some(q) = body
                        .strip_prefix('\'')
                        .and_then(|b| b.strip_suffix('\''))
                        .filter(|q| !q.contains('\''))
                    {
                        steps.push(Step::Field(q.to_string()));
                    } else {
                        return Err(unsupported());
                    }
                    i = close + 1;
                }
                _ => return Err(unsupported()),
            }
        }
        Ok(JsonPath(steps))
    }

    fn get<'a>(&self, mut v: &'a Value) -> Option<&'a Value> {
        for s in &self.0 {
            v = match s {
                Step::Field(f) => v.get(f)?,
                Step::Index(n) => v.get(n)?,
                Step::Equals(field, value) => v.as_array()?.iter().find(|item| {
                    field
                        .iter()
                        .try_fold(*item, |at, f| at.get(f))
                        .and_then(Value::as_str)
                        == Some(value.as_str())
                })?,
            };
        }
        Some(v)
    }
}

impl Custom {
    fn cell(&self, c: &Cell, obj: &Value, now: chrono::DateTime<chrono::Utc>) -> Value {
        let Some(v) = c.path.get(obj).filter(|v| !v.is_null()) else {
            return Value::Null;
        };
        match (c.ty, v) {
            ("date", Value::String(t)) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(t) => json!(table_fmt::human_age(
                    (now - t.with_timezone(&chrono::Utc)).num_seconds()
                )),
                Err(_) => json!(t),
            },
            ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => v.clone(),
            ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => v.clone(),
            ("string", Value::String(_)) => v.clone(),
            // A value of another type than the column's is shown as JSON, as kube's
            // converter prints it.
            (_, Value::String(s)) => json!(s),
            _ => json!(v.to_string()),
        }
    }
}

fn schema_causes(causes: Vec<crd_schema::Cause>) -> impl Iterator<Item = Cause> {
    causes.into_iter().map(|c| Cause {
        reason: c.reason,
        field: c.field,
        message: c.message,
    })
}

impl KindRules for Custom {
    fn default(&self, obj: &mut Value) {
        self.schema.default(obj);
    }

    fn on_create(&self, obj: &mut Value, _now: &str) {
        // kube's customResourceStrategy: create cannot set the status of a kind with the
        // status subresource; every new object is at generation 1.
        if self.status
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        obj["metadata"]["generation"] = json!(1);
    }

    fn validate(
        &self,
        _res: &Resource,
        obj: &Value,
        _old: Option<&Value>,
        causes: &mut Vec<Cause>,
    ) {
        causes.extend(schema_causes(self.schema.validate(obj)));
    }

    fn validate_status(&self, _old: &Value, obj: &mut Value) -> Vec<Cause> {
        self.schema.default(obj);
        schema_causes(self.schema.validate(obj)).collect()
    }

    fn columns(&self) -> &'static [Column] {
        if self.cells.is_empty() {
            &table_fmt::NAME_AGE
        } else {
            self.columns
        }
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        if self.cells.is_empty() {
            return vec![
                table_fmt::name(o),
                json!(table_fmt::age(o, table_fmt::CREATED, now)),
            ];
        }
        let mut out = vec![table_fmt::name(o)];
        out.extend(self.cells.iter().map(|c| self.cell(c, o, now)));
        out
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        Some(self.typed)
    }
}

/// A custom kind's typed face: decoding prunes what the schema does not specify (and reads
/// `metadata` as an ObjectMeta), and OpenAPI gets the schema under kube's definition name.
struct CustomTyped {
    schema: Schema,
    openapi: Value,
    group: String,
    version: String,
    kind: String,
}

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

impl Typed for CustomTyped {
    fn round_trip(&self, obj: &Value) -> Result<Value, String> {
        let mut out = obj.clone();
        self.schema.prune(&mut out);
        if let Some(m) = obj.get("metadata") {
            let meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta =
                serde_json::from_value(m.clone()).map_err(|e| format!("metadata: {e}"))?;
            out["metadata"] = serde_json::to_value(meta).map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    fn register(&self, generator: &mut SchemaGenerator) -> String {
        // kube names a custom kind's definition by its reversed group: com.example.v1.Widget.
        let mut parts: Vec<&str> = self.group.split('.').collect();
        parts.reverse();
        let name = format!("{}.{}.{}", parts.join("."), self.version, self.kind);
        let mut schema = self.openapi.clone();
        if let Some(o) = schema.as_object_mut() {
            let props = o
                .entry("properties")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut with_meta = Map::new();
            with_meta.insert(
                "apiVersion".into(),
                json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
            );
            with_meta.insert(
                "kind".into(),
                json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
            );
            with_meta.insert(
                "metadata".into(),
                json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
                    "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}),
            );
            for (k, v) in props {
                if k != "metadata" && k != "apiVersion" && k != "kind" {
                    with_meta.insert(k, v);
                }
            }
            o.insert("properties".into(), Value::Object(with_meta));
        }
        // ObjectMeta's schema, which the custom kind refers to.
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
        generator.definitions_mut().insert(name.clone(), schema);
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths() {
        let p = JsonPath::parse(".status.conditions[0]['last.seen']").unwrap();
        let o = json!({"status": {"conditions": [{"last.seen": "x"}]}});
        assert_eq!(p.get(&o), Some(&json!("x")));
        assert_eq!(
            JsonPath::parse("{.spec.a}")
                .unwrap()
                .get(&json!({"spec": {"a": 1}})),
            Some(&json!(1))
        );
        assert!(
            JsonPath::parse("spec.a")
                .unwrap_err()
                .contains("starting with .")
        );
        for bad in [".a[*]", ".a..b", ".a[?(@.x)]", ".a[?(@.x>1)]", ".a b"] {
            assert!(
                JsonPath::parse(bad)
                    .unwrap_err()
                    .contains("fields, indexes"),
                "{bad}"
            );
        }
        let ready = JsonPath::parse(r#".status.conditions[?(@.type=="Ready")].status"#).unwrap();
        let o = json!({"status": {"conditions": [{"type": "Synced", "status": "False"},
            {"type": "Ready", "status": "True"}]}});
        assert_eq!(ready.get(&o), Some(&json!("True")));
        let quoted = JsonPath::parse(".status.conditions[?(@.type=='Gone')].status").unwrap();
        assert_eq!(quoted.get(&o), None);
        assert_eq!(pointer_of(".spec.replicas"), "/spec/replicas");
    }
}
