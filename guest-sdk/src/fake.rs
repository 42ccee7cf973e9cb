use std::cell::RefCell;
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::patch::merge_patch;
use crate::pod::{SAFE_ALPHABET, fnv1a32};
use crate::selector::Selector;
use crate::{ApiError, ApiResult, Cluster, DeleteOptions, LogLevel, Propagation};

/// Which kind of write a [`Write`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `create`.
    Create,
    /// `update`.
    Update,
    /// `update-status`.
    UpdateStatus,
    /// `patch`.
    Patch,
    /// `delete`.
    Delete,
    /// `bind-pod`.
    Bind,
}

/// One successful write against a [`FakeCluster`], for assertions like "created 3 pods".
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// What was done.
    pub verb: Verb,
    /// Kind written.
    pub api_version: String,
    /// Kind written.
    pub kind: String,
    /// Namespace written.
    pub namespace: String,
    /// Object name (the generated one for `generateName` creates).
    pub name: String,
    /// The object after the write; before it for deletes; the patch for patches.
    pub body: Value,
}

type Key = (String, String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    counter: u64,
    now: String,
    writes: Vec<Write>,
    logs: Vec<(LogLevel, String)>,
}

/// An in-memory API server for native unit tests of plugins.
///
/// Behaves like the real one where controllers notice: uid, resourceVersion (one global
/// counter), creationTimestamp and generation are assigned; `generateName` gets a 5-char
/// suffix (deterministic); updates carrying a stale resourceVersion fail with `conflict`;
/// `update` and `patch` ignore `status` and `update-status` changes only `status` (the
/// status-subresource split); `generation` moves when anything outside metadata/status
/// changes; created objects start with an empty status (Pods with `phase: Pending`).
/// Deletion honours finalizers as the API server does: an object with finalizers gets a
/// `deletionTimestamp` and stays until a write removes the last one; `delete_object_with`
/// adds `foregroundDeletion` / `orphan` for those policies (the garbage collector then does
/// the work, as in Kubernetes).
/// Objects of any kind are kept by apiVersion, kind, namespace and name, so custom kinds (see
/// [`custom_resource!`](crate::custom_resource)) work as built-in ones do; every kind is
/// treated as having a status subresource.
/// Garbage collection runs only when a test calls [`collect_garbage`](Self::collect_garbage).
/// Not simulated: admission, schemas and defaulting, graceful deletion of pods.
///
/// ```
/// use k8s_openapi::api::core::v1::Pod;
/// use kedge_guest::{ClusterExt, FakeCluster, Verb};
/// let fake = FakeCluster::new();
/// let mut pod = Pod::default();
/// pod.metadata.generate_name = Some("web-".into());
/// let made = fake.create("default", &pod).unwrap();
/// assert!(made.metadata.name.unwrap().starts_with("web-"));
/// assert_eq!(fake.count(Verb::Create, "Pod"), 1);
/// ```
pub struct FakeCluster {
    state: RefCell<State>,
}

impl Default for FakeCluster {
    fn default() -> Self {
        Self::new()
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn not_found(kind: &str, ns: &str, name: &str) -> ApiError {
    ApiError::NotFound(format!("{kind} {ns}/{name} not found"))
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

impl FakeCluster {
    /// An empty cluster whose clock reads 2025-01-01T00:00:00Z.
    pub fn new() -> Self {
        Self {
            state: RefCell::new(State {
                now: "2025-01-01T00:00:00Z".into(),
                ..Default::default()
            }),
        }
    }

    /// Sets what [`Cluster::now`] returns (RFC 3339), so tests control time.
    pub fn set_now(&self, rfc3339: &str) {
        self.state.borrow_mut().now = rfc3339.to_owned();
    }

    /// Puts an object into the cluster as given (status included), filling uid,
    /// resourceVersion and creationTimestamp when missing; not recorded as a write.
    pub fn seed<K: k8s_openapi::Resource + Serialize>(&self, obj: &K) -> Value {
        let mut v = serde_json::to_value(obj).expect("k8s-openapi types serialize");
        v["apiVersion"] = json!(K::API_VERSION);
        v["kind"] = json!(K::KIND);
        self.seed_json(v)
    }

    /// [`seed`](Self::seed) for raw JSON; `apiVersion`, `kind` and `metadata.name` required.
    pub fn seed_json(&self, mut obj: Value) -> Value {
        let mut st = self.state.borrow_mut();
        st.counter += 1;
        let counter = st.counter;
        let meta = &mut obj["metadata"];
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{counter}"));
        }
        meta["resourceVersion"] = json!(counter.to_string());
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!(st.now.clone());
        }
        let key = (
            obj["apiVersion"].as_str().expect("apiVersion").to_owned(),
            obj["kind"].as_str().expect("kind").to_owned(),
            meta_str(&obj, "namespace").unwrap_or("").to_owned(),
            meta_str(&obj, "name").expect("metadata.name").to_owned(),
        );
        st.objects.insert(key, obj.clone());
        obj
    }

    /// The stored object, straight from the store.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        self.state
            .borrow()
            .objects
            .get(&key(api_version, kind, namespace, name))
            .cloned()
    }

    /// Every write so far, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.state.borrow().writes.clone()
    }

    /// How many writes of `verb` hit objects of `kind`.
    pub fn count(&self, verb: Verb, kind: &str) -> usize {
        self.state
            .borrow()
            .writes
            .iter()
            .filter(|w| w.verb == verb && w.kind == kind)
            .count()
    }

    /// Forgets recorded writes, e.g. between two reconciles of one test.
    pub fn clear_writes(&self) {
        self.state.borrow_mut().writes.clear();
    }

    /// What the garbage collector would do now: every object with owner references none of
    /// which names a stored object (by uid) is deleted — or, holding finalizers, marked with a
    /// `deletionTimestamp` — repeated until nothing changes, so chains of dependents go too.
    /// Returns how many objects went or were marked. Not recorded as writes (they are not the
    /// plugin's).
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    /// use kedge_guest::{ClusterExt, FakeCluster, meta::new_controller_ref};
    /// let fake = FakeCluster::new();
    /// let mut owner = Secret::default();
    /// owner.metadata.name = Some("owner".into());
    /// let owner = fake.create("ns", &owner).unwrap();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("dependent".into());
    /// cm.metadata.owner_references = Some(vec![new_controller_ref(&owner)]);
    /// fake.create("ns", &cm).unwrap();
    /// assert_eq!(fake.collect_garbage(), 0);
    /// fake.delete::<Secret>("ns", "owner").unwrap();
    /// assert_eq!(fake.collect_garbage(), 1);
    /// assert!(fake.get::<ConfigMap>("ns", "dependent").unwrap().is_none());
    /// ```
    pub fn collect_garbage(&self) -> usize {
        let mut st = self.state.borrow_mut();
        let mut collected = 0;
        // Each round removes at least one object, so this ends.
        loop {
            let uids: std::collections::BTreeSet<String> = st
                .objects
                .values()
                .filter_map(|o| meta_str(o, "uid").map(str::to_owned))
                .collect();
            let orphans: Vec<Key> = st
                .objects
                .iter()
                .filter(|(_, o)| o["metadata"].get("deletionTimestamp").is_none())
                .filter(|(_, o)| {
                    let refs = o["metadata"]
                        .get("ownerReferences")
                        .and_then(Value::as_array);
                    refs.is_some_and(|refs| {
                        !refs.is_empty()
                            && refs
                                .iter()
                                .all(|r| !r["uid"].as_str().is_some_and(|u| uids.contains(u)))
                    })
                })
                .map(|(k, _)| k.clone())
                .collect();
            if orphans.is_empty() {
                return collected;
            }
            for k in orphans {
                collected += 1;
                let Some(mut obj) = st.objects.remove(&k) else {
                    continue;
                };
                let held = obj["metadata"]
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if held {
                    obj["metadata"]["deletionTimestamp"] = json!(st.now.clone());
                    st.counter += 1;
                    obj["metadata"]["resourceVersion"] = json!(st.counter.to_string());
                    st.objects.insert(k, obj);
                }
            }
        }
    }

    /// Lines the plugin logged, with their level.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.state.borrow().logs.clone()
    }

    fn record(st: &mut State, verb: Verb, k: &Key, body: Value) {
        st.writes.push(Write {
            verb,
            api_version: k.0.clone(),
            kind: k.1.clone(),
            namespace: k.2.clone(),
            name: k.3.clone(),
            body,
        });
    }

    fn check_kind(body: &Value, api_version: &str, kind: &str, namespace: &str) -> ApiResult<()> {
        let av = body
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or(api_version);
        let k = body.get("kind").and_then(Value::as_str).unwrap_or(kind);
        if av != api_version || k != kind {
            return Err(ApiError::Invalid(format!(
                "body is {av}/{k}, request is for {api_version}/{kind}"
            )));
        }
        if let Some(ns) = meta_str(body, "namespace")
            && !ns.is_empty()
            && ns != namespace
        {
            return Err(ApiError::Invalid(format!(
                "the namespace of the object ({ns}) does not match the namespace on the request ({namespace})"
            )));
        }
        Ok(())
    }

    /// Common path of update and update-status: existence and optimistic concurrency.
    fn replace(
        &self,
        verb: Verb,
        api_version: &str,
        kind: &str,
        namespace: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        Self::check_kind(body, api_version, kind, namespace)?;
        let name = meta_str(body, "name")
            .ok_or_else(|| ApiError::Invalid("metadata.name is required".into()))?;
        let k = key(api_version, kind, namespace, name);
        let mut st = self.state.borrow_mut();
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| not_found(kind, namespace, name))?;
        if let Some(rv) = meta_str(body, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::Conflict(format!(
                "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            )));
        }
        let mut new = match verb {
            Verb::UpdateStatus => {
                let mut new = old.clone();
                match body.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => _ = new.as_object_mut().map(|m| m.remove("status")),
                }
                new
            }
            _ => {
                let mut new = body.clone();
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => _ = new.as_object_mut().map(|m| m.remove("status")),
                }
                preserve_system_meta(&old, &mut new);
                new
            }
        };
        finish_write(&mut st, &old, &mut new, api_version, kind);
        Self::store_or_finish(&mut st, &k, new.clone());
        Self::record(&mut st, verb, &k, new.clone());
        Ok(new)
    }

    /// Stores a written object, or removes it when it is being deleted and its last
    /// finalizer just went.
    fn store_or_finish(st: &mut State, k: &Key, obj: Value) {
        let deleting = obj["metadata"].get("deletionTimestamp").is_some();
        let held = |v: Option<&Value>| v.and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        // A namespace is also held by `spec.finalizers` (the namespace controller's).
        let finalizers = held(obj["metadata"].get("finalizers"))
            || (k.1 == "Namespace" && held(obj.pointer("/spec/finalizers")));
        if deleting && !finalizers {
            st.objects.remove(k);
        } else {
            st.objects.insert(k.clone(), obj);
        }
    }
}

fn key(api_version: &str, kind: &str, namespace: &str, name: &str) -> Key {
    (
        api_version.to_owned(),
        kind.to_owned(),
        namespace.to_owned(),
        name.to_owned(),
    )
}

fn preserve_system_meta(old: &Value, new: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "namespace",
        "name",
    ] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => _ = new["metadata"].as_object_mut().map(|m| m.remove(field)),
        }
    }
}

/// New resourceVersion, and a generation bump when the spec part changed.
fn finish_write(st: &mut State, old: &Value, new: &mut Value, api_version: &str, kind: &str) {
    st.counter += 1;
    new["apiVersion"] = json!(api_version);
    new["kind"] = json!(kind);
    new["metadata"]["resourceVersion"] = json!(st.counter.to_string());
    let generation = old["metadata"]
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let bumped = if spec_part(old) != spec_part(new) {
        generation + 1
    } else {
        generation
    };
    new["metadata"]["generation"] = json!(bumped);
}

impl Cluster for FakeCluster {
    fn get_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        Ok(self.object(api_version, kind, ns, name))
    }

    fn list_objects(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        sel: &str,
    ) -> ApiResult<Vec<Value>> {
        let selector = Selector::parse(sel).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let st = self.state.borrow();
        Ok(st
            .objects
            .iter()
            .filter(|((av, k, n, _), _)| {
                let every = api_version == "*" && kind == "*";
                (every || (av == api_version && k == kind)) && (ns.is_empty() || n == ns)
            })
            .filter(|(_, obj)| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(obj["metadata"]["labels"].clone()).unwrap_or_default();
                selector.matches(&labels)
            })
            .map(|(_, obj)| obj.clone())
            .collect())
    }

    fn create_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        Self::check_kind(body, api_version, kind, ns)?;
        let mut obj = body.clone();
        if !obj.get("metadata").is_some_and(Value::is_object) {
            return Err(ApiError::Invalid("metadata is required".into()));
        }
        let mut st = self.state.borrow_mut();
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => {
                let prefix = meta_str(&obj, "generateName")
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| ApiError::Invalid("name or generateName is required".into()))?
                    .to_owned();
                loop {
                    st.counter += 1;
                    let mut h = fnv1a32(&st.counter.to_le_bytes());
                    let suffix: String = (0..5)
                        .map(|_| {
                            let c = SAFE_ALPHABET[(h % 27) as usize] as char;
                            h /= 27;
                            c
                        })
                        .collect();
                    let candidate = format!("{prefix}{suffix}");
                    if !st
                        .objects
                        .contains_key(&key(api_version, kind, ns, &candidate))
                    {
                        break candidate;
                    }
                }
            }
        };
        let k = key(api_version, kind, ns, &name);
        if st.objects.contains_key(&k) {
            return Err(ApiError::AlreadyExists(format!(
                "{kind} \"{name}\" already exists"
            )));
        }
        st.counter += 1;
        let counter = st.counter;
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("uid-{counter}"));
        meta["resourceVersion"] = json!(counter.to_string());
        meta["creationTimestamp"] = json!(st.now.clone());
        meta["generation"] = json!(1);
        obj["status"] = if kind == "Pod" && api_version == "v1" {
            json!({"phase": "Pending"})
        } else {
            json!({})
        };
        st.objects.insert(k.clone(), obj.clone());
        Self::record(&mut st, Verb::Create, &k, obj.clone());
        Ok(obj)
    }

    fn update_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        self.replace(Verb::Update, api_version, kind, ns, body)
    }

    fn update_object_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        self.replace(Verb::UpdateStatus, api_version, kind, ns, body)
    }

    fn patch_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> ApiResult<Value> {
        let k = key(api_version, kind, ns, name);
        let mut st = self.state.borrow_mut();
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| not_found(kind, ns, name))?;
        if let Some(rv) = meta_str(patch, "resourceVersion")
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::Conflict(format!(
                "{kind} \"{name}\": the object has been modified"
            )));
        }
        let mut new = old.clone();
        merge_patch(&mut new, patch);
        if !new.is_object() {
            return Err(ApiError::Invalid("patch must leave an object".into()));
        }
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => _ = new.as_object_mut().map(|m| m.remove("status")),
        }
        preserve_system_meta(&old, &mut new);
        finish_write(&mut st, &old, &mut new, api_version, kind);
        Self::store_or_finish(&mut st, &k, new.clone());
        Self::record(&mut st, Verb::Patch, &k, patch.clone());
        Ok(new)
    }

    fn delete_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> ApiResult<()> {
        let none = DeleteOptions {
            propagation: None,
            uid: None,
            resource_version: None,
        };
        self.delete_object_with(api_version, kind, ns, name, &none)
    }

    fn delete_object_with(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<()> {
        let k = key(api_version, kind, ns, name);
        let mut st = self.state.borrow_mut();
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| not_found(kind, ns, name))?;
        if let Some(uid) = &options.uid
            && meta_str(&old, "uid") != Some(uid)
        {
            return Err(ApiError::Conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid").unwrap_or_default()
            )));
        }
        if let Some(rv) = &options.resource_version
            && meta_str(&old, "resourceVersion") != Some(rv)
        {
            return Err(ApiError::Conflict(format!(
                "{kind} \"{name}\": the object has been modified"
            )));
        }
        let mut finalizers: Vec<Value> = old["metadata"]
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let add = match options.propagation {
            Some(Propagation::Foreground) => Some("foregroundDeletion"),
            Some(Propagation::Orphan) => Some("orphan"),
            _ => None,
        };
        if let Some(f) = add
            && !finalizers.iter().any(|x| x == f)
        {
            finalizers.push(json!(f));
        }
        if finalizers.is_empty() {
            st.objects.remove(&k);
            Self::record(&mut st, Verb::Delete, &k, old);
            return Ok(());
        }
        let mut new = old.clone();
        new["metadata"]["finalizers"] = json!(finalizers);
        if new["metadata"].get("deletionTimestamp").is_none() {
            new["metadata"]["deletionTimestamp"] = json!(st.now.clone());
        }
        st.counter += 1;
        new["metadata"]["resourceVersion"] = json!(st.counter.to_string());
        st.objects.insert(k.clone(), new);
        Self::record(&mut st, Verb::Delete, &k, old);
        Ok(())
    }

    fn dependents(&self, owner_uid: &str) -> ApiResult<Vec<Value>> {
        let st = self.state.borrow();
        Ok(st
            .objects
            .values()
            .filter(|o| {
                o["metadata"]
                    .get("ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == owner_uid))
            })
            .cloned()
            .collect())
    }

    fn bind_pod(&self, ns: &str, name: &str, node: &str) -> ApiResult<()> {
        let k = key("v1", "Pod", ns, name);
        let mut st = self.state.borrow_mut();
        let old = st
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| not_found("Pod", ns, name))?;
        if let Some(current) = old["spec"].get("nodeName").and_then(Value::as_str)
            && !current.is_empty()
        {
            return Err(ApiError::Conflict(format!(
                "pod {name} is already assigned to node \"{current}\""
            )));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        st.counter += 1;
        new["metadata"]["resourceVersion"] = json!(st.counter.to_string());
        st.objects.insert(k.clone(), new.clone());
        Self::record(&mut st, Verb::Bind, &k, new);
        Ok(())
    }

    fn now(&self) -> String {
        self.state.borrow().now.clone()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.state
            .borrow_mut()
            .logs
            .push((level, message.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterExt;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p
    }

    #[test]
    fn create_assigns_system_fields_and_rejects_duplicates() {
        let fake = FakeCluster::new();
        let made = fake.create("ns", &pod("a", &[])).unwrap();
        assert_eq!(made.metadata.namespace.as_deref(), Some("ns"));
        assert!(made.metadata.uid.is_some() && made.metadata.resource_version.is_some());
        assert_eq!(
            made.metadata.creation_timestamp,
            crate::meta::parse_time("2025-01-01T00:00:00Z")
        );
        assert_eq!(made.status.unwrap().phase.as_deref(), Some("Pending"));
        assert!(matches!(
            fake.create("ns", &pod("a", &[])),
            Err(ApiError::AlreadyExists(_))
        ));
        assert!(matches!(
            fake.create("other", &{
                let mut p = pod("b", &[]);
                p.metadata.namespace = Some("ns".into());
                p
            }),
            Err(ApiError::Invalid(_))
        ));
    }

    #[test]
    fn generate_name_gives_distinct_names() {
        let fake = FakeCluster::new();
        let mut p = Pod::default();
        p.metadata.generate_name = Some("web-".into());
        let names: std::collections::BTreeSet<_> = (0..20)
            .map(|_| fake.create("ns", &p).unwrap().metadata.name.unwrap())
            .collect();
        assert_eq!(names.len(), 20);
        assert!(names.iter().all(|n| n.len() == 9 && n.starts_with("web-")));
    }

    #[test]
    fn stale_update_conflicts_and_generation_tracks_spec() {
        let fake = FakeCluster::new();
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some("r".into());
        let v1 = fake.create("ns", &rs).unwrap();
        assert_eq!(v1.metadata.generation, Some(1));
        let mut v2 = v1.clone();
        v2.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        let v2 = fake.update("ns", &v2).unwrap();
        assert_eq!(
            v2.metadata.generation,
            Some(1),
            "metadata-only change keeps generation"
        );
        let mut stale = v1.clone();
        stale.spec = Some(Default::default());
        assert!(matches!(
            fake.update("ns", &stale),
            Err(ApiError::Conflict(_))
        ));
        let mut v3 = v2.clone();
        v3.spec.get_or_insert_default().replicas = Some(3);
        v3.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas: 9,
            ..Default::default()
        });
        let v3 = fake.update("ns", &v3).unwrap();
        assert_eq!(v3.metadata.generation, Some(2));
        assert_eq!(v3.status.unwrap().replicas, 0, "update ignores status");
        let mut s = fake.get::<ReplicaSet>("ns", "r").unwrap().unwrap();
        s.status.get_or_insert_default().replicas = 3;
        s.spec.get_or_insert_default().replicas = Some(100);
        let s = fake.update_status("ns", &s).unwrap();
        assert_eq!(
            (s.status.unwrap().replicas, s.spec.unwrap().replicas),
            (3, Some(3))
        );
        assert_eq!(fake.count(Verb::Update, "ReplicaSet"), 2);
        assert_eq!(fake.count(Verb::UpdateStatus, "ReplicaSet"), 1);
    }

    #[test]
    fn list_filters_namespace_and_labels() {
        let fake = FakeCluster::new();
        fake.create("a", &pod("p1", &[("app", "web")])).unwrap();
        fake.create("a", &pod("p2", &[("app", "db")])).unwrap();
        fake.create("b", &pod("p3", &[("app", "web")])).unwrap();
        assert_eq!(fake.list::<Pod>("", "").unwrap().len(), 3);
        assert_eq!(fake.list::<Pod>("a", "").unwrap().len(), 2);
        assert_eq!(fake.list::<Pod>("", "app=web").unwrap().len(), 2);
        assert_eq!(
            fake.list::<Pod>("a", "app in (web,db),!x").unwrap().len(),
            2
        );
        assert!(matches!(
            fake.list::<Pod>("a", "app in"),
            Err(ApiError::Invalid(_))
        ));
    }

    #[test]
    fn patch_delete_bind() {
        let fake = FakeCluster::new();
        fake.create("ns", &pod("p", &[("a", "1"), ("b", "2")]))
            .unwrap();
        let p: Pod = fake
            .patch_merge(
                "ns",
                "p",
                &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
            )
            .unwrap();
        assert_eq!(
            p.metadata.labels.unwrap().into_iter().collect::<Vec<_>>(),
            [("b".to_string(), "2".to_string()), ("c".into(), "3".into())]
        );
        fake.bind_pod("ns", "p", "n1").unwrap();
        assert_eq!(
            fake.get::<Pod>("ns", "p")
                .unwrap()
                .unwrap()
                .spec
                .unwrap()
                .node_name
                .as_deref(),
            Some("n1")
        );
        assert!(matches!(
            fake.bind_pod("ns", "p", "n2"),
            Err(ApiError::Conflict(_))
        ));
        fake.delete::<Pod>("ns", "p").unwrap();
        assert!(fake.get::<Pod>("ns", "p").unwrap().is_none());
        assert!(fake.delete::<Pod>("ns", "p").unwrap_err().is_not_found());
        let verbs: Vec<_> = fake.writes().iter().map(|w| w.verb).collect();
        assert_eq!(verbs, [Verb::Create, Verb::Patch, Verb::Bind, Verb::Delete]);
        fake.set_now("2030-01-01T00:00:00Z");
        assert_eq!(fake.now(), "2030-01-01T00:00:00Z");
    }

    /// Tests of plugins reading resource metrics seed PodMetrics as the server serves them
    /// (`metrics.k8s.io/v1beta1`, no status); `get` and `list` with selectors find them.
    #[test]
    fn pod_metrics_can_be_seeded_and_read() {
        let fake = FakeCluster::new();
        for (name, app, cpu) in [("web-1", "web", "250000000n"), ("db-1", "db", "1000n")] {
            fake.seed_json(
                json!({"apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
                "timestamp": "2025-01-01T00:00:00Z", "window": "15s",
                "containers": [{"name": "c", "usage": {"cpu": cpu, "memory": "1024Ki"}}]}),
            );
        }
        let web = fake
            .list_objects("metrics.k8s.io/v1beta1", "PodMetrics", "ns", "app=web")
            .unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0]["containers"][0]["usage"]["cpu"], "250000000n");
        let db = fake
            .get_object("metrics.k8s.io/v1beta1", "PodMetrics", "ns", "db-1")
            .unwrap()
            .unwrap();
        assert_eq!(db["window"], "15s");
    }
}
