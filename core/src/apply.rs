//! Server-side apply: field ownership (`metadata.managedFields`) and the apply merge, after
//! Kubernetes' structured-merge-diff, on `serde_json::Value`.
//!
//! Every write records which manager owns which fields. An Apply owns exactly the fields of its
//! configuration: it merges them into the live object, refuses to change a field another
//! manager owns with a different value (a conflict, unless forced), and removes the fields it
//! owned before and omits now when nobody else owns them. Other writes (`operation: Update`)
//! take over the fields they change. Lists merge per element where Kubernetes gives them keys
//! (the strategic-merge keys of [`super::patch`]), scalar sets (`finalizers`) per value, and
//! everything else is atomic. A kind with a schema (a custom kind) passes its [`Shapes`]
//! instead: its `x-kubernetes-list-type`, `-list-map-keys` and `-map-type` decide, not names.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::crd_schema::{ListType, MapType, Schema};

/// How a kind's lists and objects merge, by path: the object keys from the root, `"[]"` for
/// the items of a list (`["spec", "rules", "[]", "ports"]`). `None` where the kind does not
/// say (fields kept by `x-kubernetes-preserve-unknown-fields`): there lists are atomic and
/// objects granular, as structured-merge-diff deduces. `metadata` always follows the built-in
/// rules of ObjectMeta (`finalizers` a set, `ownerReferences` keyed by `uid`).
pub trait Shapes {
    fn list_at(&self, path: &[&str]) -> Option<ListType>;
    fn map_at(&self, path: &[&str]) -> Option<MapType>;
}

impl Shapes for Schema {
    fn list_at(&self, path: &[&str]) -> Option<ListType> {
        self.list_type_at(path)
    }

    fn map_at(&self, path: &[&str]) -> Option<MapType> {
        self.map_type_at(path)
    }
}

/// The merge rules of one write: the kind's [`Shapes`], or (None) the built-in rules by field
/// name.
#[derive(Clone, Copy)]
struct Rules<'a>(Option<&'a dyn Shapes>);

impl<'a> Rules<'a> {
    /// The kind's shapes and the schema path of `pes` (path elements), unless the built-in
    /// rules decide there.
    fn shaped<'p>(&self, pes: &'p [String]) -> Option<(&'a dyn Shapes, Vec<&'p str>)> {
        let shapes = self.0?;
        if pes.first().is_some_and(|pe| pe == "f:metadata") {
            return None;
        }
        let path = pes
            .iter()
            .map(|pe| pe.strip_prefix("f:").unwrap_or("[]"))
            .collect();
        Some((shapes, path))
    }

    /// How the list at `pes`, the value of field `field`, merges (`lists`: its values at hand).
    fn list_kind(&self, pes: &[String], field: &str, lists: &[&[Value]]) -> ListKind {
        let Some((shapes, path)) = self.shaped(pes) else {
            return list_kind(field, lists);
        };
        match shapes.list_at(&path) {
            Some(ListType::Set) => ListKind::Set,
            Some(ListType::Map(keys)) => ListKind::Keyed {
                keys,
                defaults: false,
            },
            Some(ListType::Atomic) | None => ListKind::Atomic,
        }
    }

    /// Whether the object at `pes`, the value of field `field`, is replaced whole.
    fn atomic_map(&self, pes: &[String], field: &str) -> bool {
        match self.shaped(pes) {
            Some((shapes, path)) => shapes.map_at(&path) == Some(MapType::Atomic),
            None => atomic_map(field),
        }
    }
}

/// A set of field paths in the `FieldsV1` tree form: children keyed by path element
/// (`f:name`, `k:{"name":"c"}`, `v:"x"`), `member` when the node itself is in the set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Set {
    member: bool,
    children: BTreeMap<String, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn child(&mut self, pe: String) -> &mut Set {
        self.children.entry(pe).or_default()
    }

    /// Adds one path (a list of path elements) as a member.
    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for pe in path {
            node = node.child(pe.clone());
        }
        node.member = true;
    }

    pub fn contains(&self, path: &[String]) -> bool {
        let mut node = self;
        for pe in path {
            match node.children.get(pe) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.member
    }

    /// Whether the set holds `path` or anything below it.
    fn touches(&self, path: &[String]) -> bool {
        let mut node = self;
        for pe in path {
            match node.children.get(pe) {
                Some(n) => node = n,
                None => return false,
            }
        }
        !node.is_empty()
    }

    pub fn union(&mut self, o: &Set) {
        self.member |= o.member;
        for (k, v) in &o.children {
            self.child(k.clone()).union(v);
        }
    }

    /// The members of `self` that are not members of `o`.
    pub fn difference(&self, o: &Set) -> Set {
        let mut out = Set {
            member: self.member && !o.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let d = match o.children.get(k) {
                Some(ov) => v.difference(ov),
                None => v.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// `self` without everything at or below the members of `gone` (removed subtrees).
    fn without_subtrees(&self, gone: &Set) -> Set {
        if gone.member {
            return Set::default();
        }
        let mut out = Set {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (k, v) in &self.children {
            let d = match gone.children.get(k) {
                Some(g) => v.without_subtrees(g),
                None => v.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// Every member path.
    pub fn paths(&self) -> Vec<Vec<String>> {
        fn walk(s: &Set, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            if s.member {
                out.push(prefix.clone());
            }
            for (k, v) in &s.children {
                prefix.push(k.clone());
                walk(v, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// The `fieldsV1` JSON: `{}` for a member leaf, `".": {}` for a member with children.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, v) in &self.children {
            m.insert(k.clone(), v.to_json());
        }
        Value::Object(m)
    }

    /// Reads a `fieldsV1` object (the root is not itself a member).
    pub fn from_json(v: &Value) -> Result<Set, String> {
        fn node(v: &Value, root: bool) -> Result<Set, String> {
            let m = v.as_object().ok_or("fieldsV1 nodes must be objects")?;
            let mut s = Set {
                member: !root && m.is_empty(),
                children: BTreeMap::new(),
            };
            for (k, c) in m {
                if k == "." {
                    s.member = true;
                } else if ["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                    s.children.insert(k.clone(), node(c, false)?);
                } else {
                    return Err(format!("invalid fieldsV1 path element {k:?}"));
                }
            }
            Ok(s)
        }
        node(v, true)
    }
}

/// `f:name`.
fn field_pe(name: &str) -> String {
    format!("f:{name}")
}

/// `.spec.template.spec.containers[name="c"].image`, as structured-merge-diff prints paths.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for pe in path {
        if let Some(f) = pe.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = pe.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Object fields that are replaced whole (`+structType=atomic` / `+mapType=atomic`).
fn atomic_map(field: &str) -> bool {
    matches!(field, "selector" | "nodeSelector")
}

/// The key fields of a keyed list (their defaults: [`key_default`]).
fn list_keys(field: &str, lists: &[&[Value]]) -> Option<Vec<&'static str>> {
    if field == "ports" {
        // Container ports are keyed by containerPort+protocol, Service ports by port+protocol.
        let container = lists
            .iter()
            .any(|l| l.iter().any(|p| p.get("containerPort").is_some()));
        return Some(if container {
            vec!["containerPort", "protocol"]
        } else {
            vec!["port", "protocol"]
        });
    }
    super::patch::merge_key(field, &[]).map(|k| vec![k])
}

/// The defaults Kubernetes fills in for the key fields of its built-in keyed lists.
fn key_default(key: &str) -> Option<Value> {
    (key == "protocol").then(|| Value::String("TCP".into()))
}

/// The `k:{...}` element of a keyed list item (with `defaults`: the built-in key defaults
/// fill in missing keys); `Err` names the missing key field.
fn key_pe(item: &Value, keys: &[String], defaults: bool) -> Result<String, String> {
    let mut m = Map::new();
    let mut sorted: Vec<&str> = keys.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    for k in sorted {
        match item
            .get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| key_default(k).filter(|_| defaults))
        {
            Some(v) => {
                m.insert(k.to_string(), v);
            }
            None => return Err(k.to_string()),
        }
    }
    Ok(format!("k:{}", Value::Object(m)))
}

fn value_pe(v: &Value) -> String {
    format!("v:{v}")
}

/// How a list merges.
enum ListKind {
    /// Per item, keyed by these fields (`defaults`: the built-in key defaults apply).
    Keyed {
        keys: Vec<String>,
        defaults: bool,
    },
    Set,
    Atomic,
}

/// How the list `field` merges by the built-in rules.
fn list_kind(field: &str, lists: &[&[Value]]) -> ListKind {
    if super::patch::is_set_list(field) {
        ListKind::Set
    } else if let Some(k) = list_keys(field, lists) {
        ListKind::Keyed {
            keys: k.into_iter().map(String::from).collect(),
            defaults: true,
        }
    } else {
        ListKind::Atomic
    }
}

/// The child of `v` at path element `pe` (`field` names the list `v` is, for keyed items).
fn child<'a>(v: &'a Value, pe: &str) -> Option<&'a Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        return v.get(f);
    }
    let items = v.as_array()?;
    if let Some(k) = pe.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items.iter().find(|i| matches_key(i, &keys));
    }
    if let Some(x) = pe.strip_prefix("v:") {
        let x: Value = serde_json::from_str(x).ok()?;
        return items.iter().find(|i| **i == x);
    }
    None
}

fn matches_key(item: &Value, keys: &Map<String, Value>) -> bool {
    keys.iter().all(|(k, want)| {
        item.get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| key_default(k))
            .as_ref()
            == Some(want)
    })
}

fn get_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, pe| child(v, pe))
}

/// Removes the child at `pe` from `v`.
fn remove_child(v: &mut Value, pe: &str) {
    if let Some(f) = pe.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
        return;
    }
    let Some(items) = v.as_array_mut() else {
        return;
    };
    if let Some(k) = pe.strip_prefix("k:") {
        if let Ok(keys) = serde_json::from_str::<Map<String, Value>>(k) {
            items.retain(|i| !matches_key(i, &keys));
        }
    } else if let Some(x) = pe.strip_prefix("v:")
        && let Ok(x) = serde_json::from_str::<Value>(x)
    {
        items.retain(|i| *i != x);
    }
}

fn child_mut<'a>(v: &'a mut Value, pe: &str) -> Option<&'a mut Value> {
    if let Some(f) = pe.strip_prefix("f:") {
        return v.get_mut(f);
    }
    let keys: Map<String, Value> = serde_json::from_str(pe.strip_prefix("k:")?).ok()?;
    v.as_array_mut()?.iter_mut().find(|i| matches_key(i, &keys))
}

/// An error in the apply configuration itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "{path}: element {index}: associative list with keys has an element that omits key field {key:?}"
    )]
    MissingKey {
        path: String,
        index: usize,
        key: String,
    },
}

/// The fields a value sets (its leaves, list items with their `.`), and the paths it sets to
/// `null` (removals).
struct ConfigFields {
    set: Set,
    nulls: Vec<Vec<String>>,
}

fn config_fields(v: &Value, rules: Rules<'_>) -> Result<ConfigFields, ConfigError> {
    let mut out = ConfigFields {
        set: Set::default(),
        nulls: Vec::new(),
    };
    let mut path = Vec::new();
    if let Some(m) = v.as_object() {
        walk_object(m, &mut path, &mut out, rules)?;
    }
    Ok(out)
}

fn walk_object(
    m: &Map<String, Value>,
    path: &mut Vec<String>,
    out: &mut ConfigFields,
    rules: Rules<'_>,
) -> Result<(), ConfigError> {
    for (k, v) in m {
        path.push(field_pe(k));
        if v.is_null() {
            out.nulls.push(path.clone());
        } else {
            walk_value(k, v, path, out, rules)?;
        }
        path.pop();
    }
    Ok(())
}

/// Adds the fields of `v`, the value of field `field` at `path`.
fn walk_value(
    field: &str,
    v: &Value,
    path: &mut Vec<String>,
    out: &mut ConfigFields,
    rules: Rules<'_>,
) -> Result<(), ConfigError> {
    match v {
        Value::Object(m) if !m.is_empty() && !rules.atomic_map(path, field) => {
            walk_object(m, path, out, rules)
        }
        Value::Array(items) if !items.is_empty() => match rules.list_kind(path, field, &[items]) {
            ListKind::Keyed { keys, defaults } => {
                for (index, item) in items.iter().enumerate() {
                    let pe =
                        key_pe(item, &keys, defaults).map_err(|key| ConfigError::MissingKey {
                            path: path_string(path),
                            index,
                            key,
                        })?;
                    path.push(pe);
                    out.set.insert(path);
                    if let Some(m) = item.as_object() {
                        walk_object(m, path, out, rules)?;
                    }
                    path.pop();
                }
                Ok(())
            }
            ListKind::Set => {
                for item in items {
                    path.push(value_pe(item));
                    out.set.insert(path);
                    path.pop();
                }
                Ok(())
            }
            ListKind::Atomic => {
                out.set.insert(path);
                Ok(())
            }
        },
        _ => {
            out.set.insert(path);
            Ok(())
        }
    }
}

/// Merges an apply configuration into the live value of field `field` at `path` (path
/// elements; list items as `i:`, enough for [`Rules`]).
fn merge(
    live: Option<&Value>,
    cfg: &Value,
    field: &str,
    path: &mut Vec<String>,
    rules: Rules<'_>,
) -> Value {
    match cfg {
        Value::Object(c) if !rules.atomic_map(path, field) => {
            let mut out = live.and_then(Value::as_object).cloned().unwrap_or_default();
            for (k, v) in c {
                if v.is_null() {
                    out.remove(k);
                } else {
                    path.push(field_pe(k));
                    let merged = merge(out.get(k), v, k, path, rules);
                    path.pop();
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let live_items: &[Value] = live.and_then(Value::as_array).map_or(&[], Vec::as_slice);
            match rules.list_kind(path, field, &[live_items, items]) {
                ListKind::Atomic => cfg.clone(),
                ListKind::Set => {
                    let mut out = live_items.to_vec();
                    for i in items {
                        if !out.contains(i) {
                            out.push(i.clone());
                        }
                    }
                    Value::Array(out)
                }
                ListKind::Keyed { keys, defaults } => {
                    let mut out = live_items.to_vec();
                    path.push("i:".into());
                    for item in items {
                        let Ok(pe) = key_pe(item, &keys, defaults) else {
                            continue; // reported by config_fields
                        };
                        let keys_map: Map<String, Value> =
                            serde_json::from_str(&pe[2..]).unwrap_or_default();
                        match out.iter_mut().find(|i| matches_key(i, &keys_map)) {
                            Some(existing) => {
                                *existing = merge(Some(existing), item, "", path, rules)
                            }
                            None => out.push(merge(None, item, "", path, rules)),
                        }
                    }
                    path.pop();
                    Value::Array(out)
                }
            }
        }
        _ => cfg.clone(),
    }
}

/// Metadata the server owns: never part of a field set.
const UNTRACKED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The part of an object whose fields a write to `sub` (None: the main resource) tracks.
pub fn tracked_view(obj: &Value, sub: Option<&str>) -> Value {
    let mut v = obj.clone();
    let Some(m) = v.as_object_mut() else {
        return Value::Object(Map::new());
    };
    if sub == Some("status") {
        m.retain(|k, _| k == "status");
        return v;
    }
    m.remove("apiVersion");
    m.remove("kind");
    m.remove("status");
    if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in UNTRACKED_META {
            meta.remove(*f);
        }
    }
    if m.get("metadata")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        m.remove("metadata");
    }
    v
}

/// One `metadata.managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub fields: Set,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }

    /// How conflict messages name the manager: `"kubectl"` for an applier,
    /// `"kubectl-edit" using apps/v1` for an updater.
    pub fn display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), self.manager.clone().into());
        m.insert("operation".into(), self.operation.clone().into());
        m.insert("apiVersion".into(), self.api_version.clone().into());
        if let Some(t) = &self.time {
            m.insert("time".into(), t.clone().into());
        }
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), s.clone().into());
        }
        m.insert("fieldsType".into(), "FieldsV1".into());
        m.insert("fieldsV1".into(), self.fields.to_json());
        Value::Object(m)
    }

    pub fn from_json(v: &Value) -> Result<Entry, String> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
        if s("fieldsType").is_some_and(|t| t != "FieldsV1") {
            return Err("only fieldsType FieldsV1 is supported".into());
        }
        Ok(Entry {
            manager: s("manager").unwrap_or_default(),
            operation: s("operation").ok_or("managedFields entry without operation")?,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").filter(|s| !s.is_empty()),
            fields: match v.get("fieldsV1") {
                Some(f) => Set::from_json(f)?,
                None => Set::default(),
            },
        })
    }
}

/// The entries of an object's `metadata.managedFields`; malformed entries are dropped.
pub fn managed_fields(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|e| Entry::from_json(e).ok()).collect())
        .unwrap_or_default()
}

/// `metadata.managedFields` for `entries` (`None` when there are none).
pub fn managed_fields_json(entries: &[Entry]) -> Option<Value> {
    (!entries.is_empty()).then(|| Value::Array(entries.iter().map(Entry::to_json).collect()))
}

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The manager as conflict messages print it ([`Entry::display`]).
    pub manager: String,
    /// The field as structured-merge-diff prints it (`.spec.replicas`).
    pub field: String,
}

/// kube-apiserver's message for a failed apply.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager, c.field
        );
    }
    let mut by_manager: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(&c.manager).or_default().push(&c.field);
    }
    let mut lines = Vec::new();
    for (m, fields) in by_manager {
        lines.push(format!("conflicts with {m}:"));
        lines.extend(fields.iter().map(|f| format!("- {f}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("{}", conflict_message(.0))]
    Conflicts(Vec<Conflict>),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Who applies, and how.
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub force: bool,
    pub now: &'a str,
    /// The kind's list and map types (a custom kind's schema); None: the built-in rules.
    pub shapes: Option<&'a dyn Shapes>,
}

/// The object an apply produces and its new managed fields.
#[derive(Debug)]
pub struct Applied {
    pub object: Value,
    pub managed: Vec<Entry>,
}

/// Server-side apply of `config` (already stripped of status and server-owned metadata) to
/// `live` (None: the object does not exist yet), on the main resource.
pub fn apply(
    live: Option<&Value>,
    managed: &[Entry],
    config: &Value,
    req: &ApplyRequest<'_>,
) -> Result<Applied, ApplyError> {
    let empty = Value::Object(Map::new());
    let live = live.unwrap_or(&empty);
    let cfg_view = tracked_view(config, None);
    let rules = Rules(req.shapes);
    let cfg = config_fields(&cfg_view, rules)?;
    let live_view = tracked_view(live, None);
    let mut entries: Vec<Entry> = managed.to_vec();
    let me = entries
        .iter()
        .position(|e| e.is(req.manager, "Apply", None));
    let previous = me.map(|i| entries[i].fields.clone()).unwrap_or_default();

    // Conflicts: a field this configuration changes that another manager owns.
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Vec<String>, bool)> = Vec::new();
    for path in cfg.set.paths() {
        let node_has_children = get_node(&cfg.set, &path).is_some_and(|n| !n.children.is_empty());
        if node_has_children {
            continue; // a list item's `.`: its fields are compared one by one
        }
        let want = get_at(&cfg_view, &path);
        if get_at(&live_view, &path) == want {
            continue; // same value: shared ownership
        }
        for (i, e) in entries.iter().enumerate() {
            if Some(i) != me && e.fields.contains(&path) {
                conflicts.push((i, path.clone()));
                taken.push((i, path.clone(), false));
            }
        }
    }
    for path in &cfg.nulls {
        if get_at(&live_view, path).is_none() {
            continue;
        }
        for (i, e) in entries.iter().enumerate() {
            if Some(i) != me && e.fields.touches(path) {
                conflicts.push((i, path.clone()));
                taken.push((i, path.clone(), true));
            }
        }
    }
    if !conflicts.is_empty() && !req.force {
        let mut list: Vec<Conflict> = conflicts
            .iter()
            .map(|(i, p)| Conflict {
                manager: entries[*i].display(),
                field: path_string(p),
            })
            .collect();
        list.sort_by(|a, b| (&a.manager, &a.field).cmp(&(&b.manager, &b.field)));
        list.dedup();
        return Err(ApplyError::Conflicts(list));
    }
    // Forced: the other managers lose the fields taken from them.
    for (i, path, subtree) in taken {
        let mut p = Set::default();
        p.insert(&path);
        entries[i].fields = if subtree {
            entries[i].fields.without_subtrees(&p)
        } else {
            entries[i].fields.difference(&p)
        };
    }
    // Null removes the field from everyone.
    for path in &cfg.nulls {
        let mut p = Set::default();
        p.insert(path);
        for e in entries.iter_mut() {
            e.fields = e.fields.without_subtrees(&p);
        }
    }

    let mut object = merge(Some(live), config, "", &mut Vec::new(), rules);

    // Fields this manager applied before and omits now go, unless someone still owns them.
    let mut keep = cfg.set.clone();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) != me {
            keep.union(&e.fields);
        }
    }
    let dropped = previous.difference(&cfg.set);
    prune(&mut object, &dropped, Some(&keep), &[]);

    let entry = Entry {
        manager: req.manager.to_string(),
        operation: "Apply".into(),
        api_version: req.api_version.to_string(),
        time: Some(req.now.to_string()),
        subresource: None,
        fields: cfg.set,
    };
    match me {
        Some(i) => {
            let same =
                entries[i].fields == entry.fields && entries[i].api_version == entry.api_version;
            let time = entries[i].time.clone();
            entries[i] = entry;
            if same {
                entries[i].time = time; // an unchanged apply changes nothing
            }
        }
        None => entries.push(entry),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(Applied {
        object,
        managed: entries,
    })
}

fn get_node<'a>(s: &'a Set, path: &[String]) -> Option<&'a Set> {
    path.iter().try_fold(s, |n, pe| n.children.get(pe))
}

/// Removes from `v` the members of `remove` that `keep` holds nothing at or below; `keys` are
/// the key fields of the list item `v` is (never removed while the item stays).
fn prune(v: &mut Value, remove: &Set, keep: Option<&Set>, keys: &[String]) {
    for (pe, r) in &remove.children {
        let k = keep.and_then(|k| k.children.get(pe));
        let kept = k.is_some_and(|k| !k.is_empty());
        if r.member && !kept {
            if !keys.contains(pe) {
                remove_child(v, pe);
            }
            continue;
        }
        if r.children.is_empty() {
            continue;
        }
        let item_keys: Vec<String> = pe
            .strip_prefix("k:")
            .and_then(|k| serde_json::from_str::<Map<String, Value>>(k).ok())
            .map(|m| m.keys().map(|k| field_pe(k)).collect())
            .unwrap_or_default();
        if let Some(c) = child_mut(v, pe) {
            prune(c, r, k, &item_keys);
        }
    }
}

/// Paths `new` sets or changes relative to `old`, and subtrees it removes.
#[derive(Default)]
struct Diff {
    changed: Set,
    removed: Set,
}

fn diff_object(
    old: &Map<String, Value>,
    new: &Map<String, Value>,
    path: &mut Vec<String>,
    d: &mut Diff,
    rules: Rules<'_>,
) {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        path.push(field_pe(k));
        d.removed.insert(path);
        path.pop();
    }
    for (k, n) in new {
        path.push(field_pe(k));
        diff_value(k, old.get(k), n, path, d, rules);
        path.pop();
    }
}

fn diff_value(
    field: &str,
    old: Option<&Value>,
    new: &Value,
    path: &mut Vec<String>,
    d: &mut Diff,
    rules: Rules<'_>,
) {
    if old == Some(new) {
        return;
    }
    match (old, new) {
        (Some(Value::Object(o)), Value::Object(n)) if !rules.atomic_map(path, field) => {
            diff_object(o, n, path, d, rules);
            if n.is_empty() {
                d.changed.insert(path);
            }
        }
        (None, Value::Object(n)) if !rules.atomic_map(path, field) && !n.is_empty() => {
            diff_object(&Map::new(), n, path, d, rules)
        }
        (o, Value::Array(items)) if !items.is_empty() => {
            let old_items: &[Value] = o.and_then(Value::as_array).map_or(&[], Vec::as_slice);
            match rules.list_kind(path, field, &[old_items, items]) {
                ListKind::Atomic => d.changed.insert(path),
                ListKind::Set => {
                    for i in old_items.iter().filter(|i| !items.contains(i)) {
                        path.push(value_pe(i));
                        d.removed.insert(path);
                        path.pop();
                    }
                    for i in items.iter().filter(|i| !old_items.contains(i)) {
                        path.push(value_pe(i));
                        d.changed.insert(path);
                        path.pop();
                    }
                }
                ListKind::Keyed { keys, defaults } => {
                    let new_pes: Vec<Option<String>> = items
                        .iter()
                        .map(|i| key_pe(i, &keys, defaults).ok())
                        .collect();
                    for oi in old_items {
                        if let Ok(pe) = key_pe(oi, &keys, defaults)
                            && !new_pes.contains(&Some(pe.clone()))
                        {
                            path.push(pe);
                            d.removed.insert(path);
                            path.pop();
                        }
                    }
                    for (ni, pe) in items.iter().zip(new_pes) {
                        let Some(pe) = pe else {
                            d.changed.insert(path); // unkeyable: own the list whole
                            continue;
                        };
                        let before = old.and_then(|o| child(o, &pe));
                        path.push(pe);
                        if before.is_none() {
                            d.changed.insert(path);
                        }
                        let empty = Map::new();
                        let bo = before.and_then(Value::as_object).unwrap_or(&empty);
                        if let Some(no) = ni.as_object() {
                            diff_object(bo, no, path, d, rules);
                        }
                        path.pop();
                    }
                }
            }
        }
        _ => d.changed.insert(path),
    }
}

/// Ownership after a non-apply write (`operation: Update`) by `manager` that turned `old`
/// (None: a create) into `new`: the writer takes the fields it changed, every manager loses
/// the fields that are gone. `manager` None (an internal write) only drops what is gone.
/// `shapes`: the kind's list and map types, as in [`ApplyRequest::shapes`].
#[allow(clippy::too_many_arguments)] // the write's own parameters and the kind's shapes
pub fn track_update(
    managed: &[Entry],
    old: Option<&Value>,
    new: &Value,
    manager: Option<&str>,
    api_version: &str,
    sub: Option<&str>,
    now: &str,
    shapes: Option<&dyn Shapes>,
) -> Vec<Entry> {
    let empty = Value::Object(Map::new());
    let old_view = tracked_view(old.unwrap_or(&empty), sub);
    let new_view = tracked_view(new, sub);
    let mut d = Diff::default();
    if let (Some(o), Some(n)) = (old_view.as_object(), new_view.as_object()) {
        diff_object(o, n, &mut Vec::new(), &mut d, Rules(shapes));
    }
    let mut entries: Vec<Entry> = managed
        .iter()
        .map(|e| {
            let mut fields = e.fields.without_subtrees(&d.removed);
            if manager.is_some() {
                fields = fields.difference(&d.changed);
            }
            Entry {
                fields,
                ..e.clone()
            }
        })
        .collect();
    if let Some(m) = manager
        && !d.changed.is_empty()
    {
        let entry = Entry {
            manager: m.to_string(),
            operation: "Update".into(),
            api_version: api_version.to_string(),
            time: Some(now.to_string()),
            subresource: sub.map(String::from),
            fields: Set::default(),
        };
        let i = match entries.iter().position(|e| e.is(m, "Update", sub)) {
            Some(i) => i,
            None => {
                entries.push(entry.clone());
                entries.len() - 1
            }
        };
        let previous = managed.iter().find(|e| e.is(m, "Update", sub));
        let mut fields = previous
            .map(|p| p.fields.without_subtrees(&d.removed))
            .unwrap_or_default();
        fields.union(&d.changed);
        entries[i] = Entry { fields, ..entry };
    }
    entries.retain(|e| !e.fields.is_empty());
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2025-01-01T00:00:00Z";

    fn req(manager: &str, force: bool) -> ApplyRequest<'_> {
        ApplyRequest {
            manager,
            api_version: "apps/v1",
            force,
            now: NOW,
            shapes: None,
        }
    }

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": image,
                        "ports": [{"containerPort": 80}]}]}}}})
    }

    fn fields(managed: &[Entry], manager: &str) -> Value {
        managed
            .iter()
            .find(|e| e.manager == manager)
            .map(|e| e.fields.to_json())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn first_apply_owns_exactly_its_fields() {
        let out = apply(None, &[], &deploy(2, "a:1"), &req("kubectl", false)).unwrap();
        assert_eq!(out.object["spec"]["replicas"], 2);
        assert_eq!(
            fields(&out.managed, "kubectl"),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:selector": {},
                    "f:template": {"f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                            ".": {}, "f:name": {}, "f:image": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}}}}}}}}})
        );
        let e = &out.managed[0];
        assert_eq!(
            (e.operation.as_str(), e.time.as_deref()),
            ("Apply", Some(NOW))
        );
    }

    #[test]
    fn managed_fields_round_trip_the_kubernetes_json() {
        let wire = json!({"apiVersion": "apps/v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:finalizers": {".": {}, "v:\"x\"": {}},
                "f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"nginx\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}},
            "manager": "kubectl-client-side-apply", "operation": "Update",
            "time": "2024-05-01T10:00:00Z"});
        let e = Entry::from_json(&wire).unwrap();
        assert!(e.fields.contains(&[
            "f:spec".into(),
            "f:template".into(),
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"nginx\"}".into()
        ]));
        assert!(e.fields.contains(&["f:metadata".into(), "f:labels".into()]));
        assert!(!e.fields.contains(&["f:spec".into()]));
        assert_eq!(e.to_json(), wire);
        assert_eq!(e.display(), "\"kubectl-client-side-apply\" using apps/v1");
        assert!(Entry::from_json(&json!({"operation": "Apply", "fieldsV1": {"x": {}}})).is_err());
    }

    #[test]
    fn dropping_a_field_from_the_config_removes_it() {
        let first = apply(None, &[], &deploy(2, "a:1"), &req("kubectl", false)).unwrap();
        let mut cfg = deploy(2, "a:1");
        cfg["spec"].as_object_mut().unwrap().remove("replicas");
        cfg["metadata"].as_object_mut().unwrap().remove("labels");
        let out = apply(
            Some(&first.object),
            &first.managed,
            &cfg,
            &req("kubectl", false),
        )
        .unwrap();
        assert!(out.object["spec"].get("replicas").is_none());
        assert_eq!(out.object["metadata"]["labels"], json!({}));
        assert!(
            !out.managed[0]
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()])
        );
    }

    #[test]
    fn dropped_field_owned_by_someone_else_stays() {
        let first = apply(None, &[], &deploy(2, "a:1"), &req("a", false)).unwrap();
        // Manager b applies the same replicas: shared ownership, no conflict.
        let b_cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"}, "spec": {"replicas": 2}});
        let shared = apply(
            Some(&first.object),
            &first.managed,
            &b_cfg,
            &req("b", false),
        )
        .unwrap();
        assert_eq!(shared.managed.len(), 2);
        let mut cfg = deploy(2, "a:1");
        cfg["spec"].as_object_mut().unwrap().remove("replicas");
        let out = apply(
            Some(&shared.object),
            &shared.managed,
            &cfg,
            &req("a", false),
        )
        .unwrap();
        assert_eq!(out.object["spec"]["replicas"], 2, "b still owns it");
    }

    #[test]
    fn conflict_with_an_updater_and_force() {
        let first = apply(None, &[], &deploy(2, "a:1"), &req("kubectl", false)).unwrap();
        // kubectl scale (an Update) sets replicas to 5.
        let mut scaled = first.object.clone();
        scaled["spec"]["replicas"] = json!(5);
        let managed = track_update(
            &first.managed,
            Some(&first.object),
            &scaled,
            Some("kubectl-scale"),
            "apps/v1",
            None,
            NOW,
            None,
        );
        assert_eq!(
            fields(&managed, "kubectl-scale"),
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert!(
            !managed[0]
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()]),
            "the updater took the field over"
        );
        // Re-applying replicas 3 conflicts.
        let err = apply(
            Some(&scaled),
            &managed,
            &deploy(3, "a:1"),
            &req("kubectl", false),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        // Re-applying the live value does not: shared ownership.
        let same = apply(
            Some(&scaled),
            &managed,
            &deploy(5, "a:1"),
            &req("kubectl", false),
        )
        .unwrap();
        assert_eq!(same.managed.len(), 2);
        // Forced: the applier takes it; the updater's entry, now empty, goes.
        let forced = apply(
            Some(&scaled),
            &managed,
            &deploy(3, "a:1"),
            &req("kubectl", true),
        )
        .unwrap();
        assert_eq!(forced.object["spec"]["replicas"], 3);
        assert_eq!(forced.managed.len(), 1);
        assert!(
            forced.managed[0]
                .fields
                .contains(&["f:spec".into(), "f:replicas".into()])
        );
    }

    #[test]
    fn conflicts_with_several_fields_are_listed_by_manager() {
        let first = apply(None, &[], &deploy(2, "a:1"), &req("x", false)).unwrap();
        let err = apply(
            Some(&first.object),
            &first.managed,
            &deploy(3, "a:2"),
            &req("y", false),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"x\":\n- .spec.replicas\n\
             - .spec.template.spec.containers[name=\"c\"].image"
        );
    }

    #[test]
    fn keyed_lists_merge_per_item_and_nested() {
        let live = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}]}});
        let managed = track_update(&[], None, &live, Some("creator"), "v1", None, NOW, None);
        let cfg = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}});
        let out = apply(Some(&live), &managed, &cfg, &req("me", false)).unwrap();
        assert_eq!(
            out.object["spec"]["containers"],
            json!([{"name": "a", "image": "a:1",
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
                   {"name": "b", "image": "b:1"}])
        );
        let mine = fields(&out.managed, "me");
        assert_eq!(
            mine["f:spec"]["f:containers"]["k:{\"name\":\"a\"}"]["f:env"],
            json!({"k:{\"name\":\"Y\"}": {".": {}, "f:name": {}, "f:value": {}}})
        );
        // Dropping Y from the config removes just that env item.
        let cfg2 = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}]}});
        let out2 = apply(Some(&out.object), &out.managed, &cfg2, &req("me", false)).unwrap();
        assert_eq!(
            out2.object["spec"]["containers"][0]["env"],
            json!([{"name": "X", "value": "1"}])
        );
        // A keyed item without its key is refused.
        let bad = json!({"spec": {"containers": [{"image": "x"}]}});
        assert!(matches!(
            apply(Some(&live), &managed, &bad, &req("me", false)),
            Err(ApplyError::Config(ConfigError::MissingKey { .. }))
        ));
    }

    #[test]
    fn dropped_list_item_goes_unless_others_own_part_of_it() {
        let cfg = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let first = apply(None, &[], &cfg, &req("me", false)).unwrap();
        // Someone else changes b's image.
        let mut live = first.object.clone();
        live["spec"]["containers"][1]["image"] = json!("b:2");
        let managed = track_update(
            &first.managed,
            Some(&first.object),
            &live,
            Some("kubectl-set"),
            "v1",
            None,
            NOW,
            None,
        );
        let only_a = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}]}});
        let out = apply(Some(&live), &managed, &only_a, &req("me", false)).unwrap();
        assert_eq!(
            out.object["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]),
            "b stays (with its key) while another manager owns its image"
        );
        let out = apply(
            Some(&first.object),
            &first.managed,
            &only_a,
            &req("me", false),
        )
        .unwrap();
        assert_eq!(
            out.object["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}])
        );
    }

    #[test]
    fn atomic_lists_and_maps_are_replaced_whole() {
        let live = json!({"spec": {"selector": {"matchLabels": {"a": "1", "b": "2"}},
            "containers": [{"name": "c", "args": ["x", "y"]}]}});
        let cfg = json!({"spec": {"selector": {"matchLabels": {"a": "1"}},
            "containers": [{"name": "c", "args": ["z"]}]}});
        let out = apply(Some(&live), &[], &cfg, &req("me", false)).unwrap();
        assert_eq!(
            out.object["spec"]["selector"],
            json!({"matchLabels": {"a": "1"}})
        );
        assert_eq!(out.object["spec"]["containers"][0]["args"], json!(["z"]));
        let f = fields(&out.managed, "me");
        assert_eq!(f["f:spec"]["f:selector"], json!({}));
        assert_eq!(
            f["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:args"],
            json!({})
        );
        // An updater changing one arg owns the whole list: a different apply conflicts.
        let mut changed = out.object.clone();
        changed["spec"]["containers"][0]["args"] = json!(["z", "w"]);
        let m = track_update(
            &out.managed,
            Some(&out.object),
            &changed,
            Some("u"),
            "v1",
            None,
            NOW,
            None,
        );
        let err = apply(Some(&changed), &m, &cfg, &req("me", false)).unwrap_err();
        assert!(
            err.to_string()
                .contains(".spec.containers[name=\"c\"].args"),
            "{err}"
        );
    }

    #[test]
    fn null_in_the_config_removes_the_field() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"paused": true}});
        let managed = track_update(&[], None, &live, Some("creator"), "v1", None, NOW, None);
        let cfg = json!({"metadata": {"labels": {"a": null}}, "spec": {"paused": null}});
        // Owned by someone else with a value: a conflict...
        let err = apply(Some(&live), &managed, &cfg, &req("me", false)).unwrap_err();
        assert!(
            matches!(&err, ApplyError::Conflicts(c) if c.len() == 2),
            "{err}"
        );
        // ...forced, the fields go and nobody owns them.
        let out = apply(Some(&live), &managed, &cfg, &req("me", true)).unwrap();
        assert_eq!(
            out.object,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {}})
        );
        assert_eq!(
            fields(&out.managed, "creator"),
            json!({"f:metadata": {"f:labels": {"f:b": {}}}})
        );
        assert!(out.managed.iter().all(|e| e.manager != "me"));
    }

    #[test]
    fn set_lists_own_values_and_reapply_is_stable() {
        let cfg = json!({"metadata": {"finalizers": ["x", "y"]}});
        let first = apply(
            Some(&json!({"metadata": {"finalizers": ["z"]}})),
            &[],
            &cfg,
            &req("me", false),
        )
        .unwrap();
        assert_eq!(
            first.object["metadata"]["finalizers"],
            json!(["z", "x", "y"])
        );
        assert_eq!(
            fields(&first.managed, "me"),
            json!({"f:metadata": {"f:finalizers": {"v:\"x\"": {}, "v:\"y\"": {}}}})
        );
        let later = ApplyRequest {
            now: "2030-01-01T00:00:00Z",
            ..req("me", false)
        };
        let again = apply(Some(&first.object), &first.managed, &cfg, &later).unwrap();
        assert_eq!(again.object, first.object);
        assert_eq!(again.managed, first.managed, "no-op apply keeps the time");
    }

    #[test]
    fn updates_track_changes_and_removals() {
        let old = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "resourceVersion": "3", "labels": {"a": "1"}},
            "data": {"k": "v", "gone": "1"}, "status": {"s": 1}});
        let created = track_update(
            &[],
            None,
            &old,
            Some("kubectl-create"),
            "v1",
            None,
            NOW,
            None,
        );
        assert_eq!(
            fields(&created, "kubectl-create"),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:data": {"f:k": {}, "f:gone": {}}})
        );
        let mut new = old.clone();
        new["data"] = json!({"k": "v2"});
        let m = track_update(
            &created,
            Some(&old),
            &new,
            Some("kubectl-edit"),
            "v1",
            None,
            NOW,
            None,
        );
        assert_eq!(
            fields(&m, "kubectl-create"),
            json!({"f:metadata": {"f:labels": {"f:a": {}}}})
        );
        assert_eq!(fields(&m, "kubectl-edit"), json!({"f:data": {"f:k": {}}}));
        // A status write tracks only status, under the subresource.
        let mut st = new.clone();
        st["status"] = json!({"s": 2});
        let m2 = track_update(
            &m,
            Some(&new),
            &st,
            Some("ctl"),
            "v1",
            Some("status"),
            NOW,
            None,
        );
        let e = m2.iter().find(|e| e.manager == "ctl").unwrap();
        assert_eq!(e.subresource.as_deref(), Some("status"));
        assert_eq!(e.fields.to_json(), json!({"f:status": {"f:s": {}}}));
        // No manager: removals still drop ownership, changes are not recorded.
        let mut gone = new.clone();
        gone["metadata"]["labels"] = json!({});
        let m3 = track_update(&m, Some(&new), &gone, None, "v1", None, NOW, None);
        assert!(m3.iter().all(|e| e.manager != "kubectl-create"));
    }

    #[test]
    fn paths_print_like_structured_merge_diff() {
        assert_eq!(
            path_string(&[
                "f:spec".into(),
                "f:ports".into(),
                "k:{\"port\":80,\"protocol\":\"TCP\"}".into(),
                "f:name".into()
            ]),
            ".spec.ports[port=80,protocol=\"TCP\"].name"
        );
        assert_eq!(
            path_string(&["f:metadata".into(), "f:finalizers".into(), "v:\"x\"".into()]),
            ".metadata.finalizers[=\"x\"]"
        );
    }

    /// A custom kind's schema: its list and map types decide, not the field names.
    fn widget_schema() -> Schema {
        let keyed = |key: &str, props: Value| {
            json!({"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": [key],
                "items": {"type": "object", "required": [key], "properties": props}})
        };
        Schema::parse(&json!({"type": "object", "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "properties": {
                "tags": {"type": "array", "x-kubernetes-list-type": "set",
                    "items": {"type": "string"}},
                "items": keyed("id", json!({"id": {"type": "integer"},
                    "value": {"type": "string"},
                    "args": {"type": "array", "x-kubernetes-list-type": "set",
                        "items": {"type": "string"}}})),
                "env": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "value": {"type": "string"}}}},
                "ports": keyed("name", json!({"name": {"type": "string"},
                    "port": {"type": "integer"}, "protocol": {"type": "string"}})),
                "containers": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "image": {"type": "string"}}}},
                "selector": {"type": "object", "properties": {
                    "a": {"type": "string"}, "b": {"type": "string"}}},
                "limits": {"type": "object", "x-kubernetes-map-type": "atomic",
                    "additionalProperties": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}))
        .unwrap()
    }

    fn shaped<'a>(manager: &'a str, force: bool, schema: &'a Schema) -> ApplyRequest<'a> {
        ApplyRequest {
            api_version: "ssa.test/v1",
            shapes: Some(schema),
            ..req(manager, force)
        }
    }

    fn widget(spec: Value) -> Value {
        json!({"apiVersion": "ssa.test/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": spec})
    }

    /// Applies `spec` as `manager` onto `on` (None: a create).
    fn apply_spec(
        on: Option<&Applied>,
        spec: Value,
        manager: &str,
        force: bool,
        schema: &Schema,
    ) -> Result<Applied, ApplyError> {
        apply(
            on.map(|a| &a.object),
            on.map_or(&[][..], |a| &a.managed[..]),
            &widget(spec),
            &shaped(manager, force, schema),
        )
    }

    #[test]
    fn schema_set_lists_merge_per_value_between_managers() {
        let schema = widget_schema();
        let a = apply_spec(None, json!({"tags": ["x", "y"]}), "a", false, &schema).unwrap();
        let b = apply_spec(Some(&a), json!({"tags": ["y", "z"]}), "b", false, &schema).unwrap();
        assert_eq!(b.object["spec"]["tags"], json!(["x", "y", "z"]));
        assert_eq!(
            fields(&b.managed, "a"),
            json!({"f:spec": {"f:tags": {"v:\"x\"": {}, "v:\"y\"": {}}}})
        );
        assert_eq!(
            fields(&b.managed, "b"),
            json!({"f:spec": {"f:tags": {"v:\"y\"": {}, "v:\"z\"": {}}}})
        );
        // a drops both: x goes, y stays while b owns it.
        let a2 = apply_spec(Some(&b), json!({"tags": []}), "a", false, &schema).unwrap();
        assert_eq!(a2.object["spec"]["tags"], json!(["y", "z"]));
    }

    #[test]
    fn schema_map_lists_merge_and_are_owned_per_item_by_their_keys() {
        let schema = widget_schema();
        let a = apply_spec(
            None,
            json!({"items": [{"id": 1, "value": "a", "args": ["p"]}]}),
            "a",
            false,
            &schema,
        )
        .unwrap();
        let b = apply_spec(
            Some(&a),
            json!({"items": [{"id": 2, "value": "b"}, {"id": 1, "args": ["q"]}]}),
            "b",
            false,
            &schema,
        )
        .unwrap();
        assert_eq!(
            b.object["spec"]["items"],
            json!([{"id": 1, "value": "a", "args": ["p", "q"]}, {"id": 2, "value": "b"}])
        );
        assert_eq!(
            fields(&b.managed, "a"),
            json!({"f:spec": {"f:items": {"k:{\"id\":1}": {".": {}, "f:id": {},
                "f:value": {}, "f:args": {"v:\"p\"": {}}}}}})
        );
        assert_eq!(
            fields(&b.managed, "b")["f:spec"]["f:items"]["k:{\"id\":2}"],
            json!({".": {}, "f:id": {}, "f:value": {}})
        );
        // Another value of a's item conflicts, by key.
        let err = apply_spec(
            Some(&b),
            json!({"items": [{"id": 1, "value": "c"}]}),
            "b",
            false,
            &schema,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.items[id=1].value"
        );
        // An update of item 2 takes just that field.
        let mut edited = b.object.clone();
        edited["spec"]["items"][1]["value"] = json!("e");
        let m = track_update(
            &b.managed,
            Some(&b.object),
            &edited,
            Some("edit"),
            "ssa.test/v1",
            None,
            NOW,
            Some(&schema),
        );
        assert_eq!(
            fields(&m, "edit"),
            json!({"f:spec": {"f:items": {"k:{\"id\":2}": {"f:value": {}}}}})
        );
        // a drops its item: it stays while b owns part of it; b drops too: it goes.
        let a2 = apply_spec(Some(&b), json!({"items": []}), "a", false, &schema).unwrap();
        assert_eq!(
            a2.object["spec"]["items"],
            json!([{"id": 1, "args": ["q"]}, {"id": 2, "value": "b"}])
        );
        let b2 = apply_spec(
            Some(&a2),
            json!({"items": [{"id": 2, "value": "b"}]}),
            "b",
            false,
            &schema,
        )
        .unwrap();
        assert_eq!(b2.object["spec"]["items"], json!([{"id": 2, "value": "b"}]));
        // An item without its key is refused as for built-in kinds.
        let bad = apply_spec(
            Some(&b2),
            json!({"items": [{"id": 2}, {"value": "x"}]}),
            "b",
            false,
            &schema,
        )
        .unwrap_err();
        assert_eq!(
            bad,
            ApplyError::Config(ConfigError::MissingKey {
                path: ".spec.items".into(),
                index: 1,
                key: "id".into()
            })
        );
    }

    #[test]
    fn schema_atomic_lists_are_replaced_whole_and_owned_by_the_last_applier() {
        let schema = widget_schema();
        let a = apply_spec(
            None,
            json!({"env": [{"name": "x"}, {"name": "y"}]}),
            "a",
            false,
            &schema,
        )
        .unwrap();
        assert_eq!(fields(&a.managed, "a"), json!({"f:spec": {"f:env": {}}}));
        let err = apply_spec(
            Some(&a),
            json!({"env": [{"name": "x", "value": "1"}]}),
            "b",
            false,
            &schema,
        )
        .unwrap_err();
        assert!(err.to_string().ends_with(": .spec.env"), "{err}");
        let b = apply_spec(
            Some(&a),
            json!({"env": [{"name": "x", "value": "1"}]}),
            "b",
            true,
            &schema,
        )
        .unwrap();
        assert_eq!(
            b.object["spec"]["env"],
            json!([{"name": "x", "value": "1"}])
        );
        assert_eq!(fields(&b.managed, "b"), json!({"f:spec": {"f:env": {}}}));
        assert!(
            b.managed.iter().all(|e| e.manager != "a"),
            "a owned only env"
        );
    }

    #[test]
    fn schema_fields_named_like_built_in_lists_follow_the_schema() {
        let schema = widget_schema();
        let spec = json!({"ports": [{"name": "http", "port": 80}],
            "containers": [{"name": "c", "image": "i:1"}], "selector": {"a": "1"}});
        let a = apply_spec(None, spec, "a", false, &schema).unwrap();
        // ports keyed by name without the built-in protocol default; containers atomic;
        // selector granular.
        assert_eq!(
            fields(&a.managed, "a"),
            json!({"f:spec": {
                "f:ports": {"k:{\"name\":\"http\"}": {".": {}, "f:name": {}, "f:port": {}}},
                "f:containers": {}, "f:selector": {"f:a": {}}}})
        );
        let b = apply_spec(
            Some(&a),
            json!({"ports": [{"name": "grpc", "port": 80}], "containers": [{"name": "d"}],
                "selector": {"b": "2"}}),
            "b",
            true,
            &schema,
        )
        .unwrap();
        assert_eq!(
            b.object["spec"],
            json!({"ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 80}],
                "containers": [{"name": "d"}], "selector": {"a": "1", "b": "2"}})
        );
        // A port item needs its name, not port or protocol.
        let err = apply_spec(
            Some(&b),
            json!({"ports": [{"port": 81}]}),
            "c",
            false,
            &schema,
        )
        .unwrap_err();
        assert!(
            matches!(&err, ApplyError::Config(ConfigError::MissingKey { key, .. }) if key == "name"),
            "{err}"
        );
    }

    #[test]
    fn schema_atomic_maps_are_replaced_whole() {
        let schema = widget_schema();
        let a = apply_spec(
            None,
            json!({"limits": {"cpu": "1", "memory": "2"}}),
            "a",
            false,
            &schema,
        )
        .unwrap();
        assert_eq!(fields(&a.managed, "a"), json!({"f:spec": {"f:limits": {}}}));
        let err = apply_spec(
            Some(&a),
            json!({"limits": {"cpu": "3"}}),
            "b",
            false,
            &schema,
        )
        .unwrap_err();
        assert!(err.to_string().ends_with(": .spec.limits"), "{err}");
        let b = apply_spec(
            Some(&a),
            json!({"limits": {"cpu": "3"}}),
            "b",
            true,
            &schema,
        )
        .unwrap();
        assert_eq!(b.object["spec"]["limits"], json!({"cpu": "3"}));
        // An update of one entry takes the whole map.
        let mut edited = b.object.clone();
        edited["spec"]["limits"]["gpu"] = json!("1");
        let m = track_update(
            &b.managed,
            Some(&b.object),
            &edited,
            Some("edit"),
            "ssa.test/v1",
            None,
            NOW,
            Some(&schema),
        );
        assert_eq!(fields(&m, "edit"), json!({"f:spec": {"f:limits": {}}}));
        assert!(m.iter().all(|e| e.manager != "b"));
    }

    #[test]
    fn schema_leaves_metadata_to_the_built_in_rules_and_deduces_unknown_fields() {
        let schema = widget_schema();
        let mut cfg = widget(json!({"extra": {"x": {"y": 1}, "containers": [{"name": "c"}]}}));
        cfg["metadata"]["finalizers"] = json!(["f"]);
        let live = json!({"metadata": {"finalizers": ["g"]},
            "spec": {"extra": {"x": {"z": 2}, "containers": [{"name": "d"}]}}});
        let out = apply(Some(&live), &[], &cfg, &shaped("a", false, &schema)).unwrap();
        assert_eq!(out.object["metadata"]["finalizers"], json!(["g", "f"]));
        assert_eq!(
            out.object["spec"]["extra"],
            json!({"x": {"z": 2, "y": 1}, "containers": [{"name": "c"}]})
        );
        assert_eq!(
            fields(&out.managed, "a"),
            json!({"f:metadata": {"f:finalizers": {"v:\"f\"": {}}},
                "f:spec": {"f:extra": {"f:x": {"f:y": {}}, "f:containers": {}}}})
        );
    }
}
