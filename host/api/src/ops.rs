//! The API's verbs on objects, independent of HTTP: the REST layer and the plugin host both
//! call these, so a write from a Wasm controller is defaulted, validated and versioned exactly
//! like one from kubectl.

use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use super::error::{ApiError, Cause, Result};
use super::kinds;
use super::schema::{self, FieldValidation};
use kedge_core::apply::{self, ApplyError, ApplyRequest};
use kedge_core::meta;
use kedge_core::patch::{self, PatchType};
use kedge_core::resources::{self, Resource};
use kedge_core::selector::{FieldSelector, Selector as LabelSelector};
use kedge_store::{self as store, EventType, Revision, Store};

pub use kedge_core::meta::{Clock, set_condition, system_clock};

/// The object verbs over one store.
pub struct Api {
    store: Arc<dyn Store>,
    clock: Clock,
    /// Serialises Service IP / node port allocation (see [`super::alloc`]).
    alloc: super::alloc::Allocator,
    /// Serialises each namespace's quota checks with its writes (see [`super::admission`]).
    pub(crate) quota: super::admission::Locks,
    /// The nodes' latest resource usage reports (`metrics.k8s.io`), in memory only.
    pub(crate) usage: super::resource_metrics::Samples,
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
}

/// One page of a list (see [`Api::list_page`]).
pub(crate) struct ListPage {
    /// The revision the list is consistent at.
    pub rev: Revision,
    /// The objects as stored (JSON).
    pub items: Vec<Bytes>,
    pub continue_token: Option<String>,
    /// Matching objects after this page.
    pub remaining: usize,
}

impl ListPage {
    /// Stored objects, parsed.
    pub fn parse(items: &[Bytes]) -> Result<Vec<Value>> {
        items
            .iter()
            .map(|b| serde_json::from_slice(b))
            .collect::<std::result::Result<Vec<Value>, _>>()
            .map_err(|e| ApiError::internal(format!("stored object unreadable: {e}")))
    }

    /// The list's `metadata`.
    pub fn metadata(&self) -> Value {
        let mut m = json!({"resourceVersion": self.rev.to_string()});
        if let Some(c) = &self.continue_token {
            m["continue"] = json!(c);
            m["remainingItemCount"] = json!(self.remaining);
        }
        m
    }
}

#[derive(Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// Unknown-field warnings for the response's `Warning` headers.
    pub warnings: std::sync::Mutex<Vec<String>>,
    /// The field manager recorded in `metadata.managedFields` (`operation: Update`); None for
    /// internal writes, which only drop ownership of fields that are gone.
    pub manager: Option<String>,
}

impl WriteOptions {
    /// Decodes `obj` as its Kubernetes type (see [`schema`]).
    fn decode(&self, res: &Resource, obj: Value) -> Result<Value> {
        let d = schema::decode(res, &obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                res.kind, res.version, res.kind
            ))
        })?;
        if !d.unknown.is_empty() {
            let list: Vec<String> = d
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            match self.validation {
                FieldValidation::Strict => {
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                FieldValidation::Warn => self
                    .warnings
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(list),
                FieldValidation::Ignore => {}
            }
        }
        Ok(d.object)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub grace_period_seconds: Option<i64>,
    pub dry_run: bool,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

impl DeleteOptions {
    /// Reads a `DeleteOptions` body (kubectl) — query parameters (Python) are merged by the
    /// caller.
    pub(crate) fn from_body(v: &Value) -> Result<Self> {
        let mut o = DeleteOptions::default();
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            o.propagation = Some(parse_propagation(p)?);
        } else if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.propagation = Some(Propagation::Orphan);
        }
        o.grace_period_seconds = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.dry_run = v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        o.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        Ok(o)
    }
}

pub(crate) fn parse_propagation(p: &str) -> Result<Propagation> {
    match p {
        "Background" => Ok(Propagation::Background),
        "Foreground" => Ok(Propagation::Foreground),
        "Orphan" => Ok(Propagation::Orphan),
        other => Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        ))),
    }
}

fn parse_rv(res: &Resource, name: &str, rv: &str) -> Result<Revision> {
    rv.parse().map_err(|_| {
        ApiError::invalid(
            res,
            name,
            vec![Cause::invalid(
                "metadata.resourceVersion",
                rv,
                "must be a decimal resource version",
            )],
        )
    })
}

/// Everything but metadata and status: what bumps `metadata.generation` when it changes.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Whether an update moves `metadata.generation`: built-in kinds on a `spec` change; custom
/// kinds, as kube's, on any change outside metadata (and outside `status` when that is a
/// subresource), whatever their top-level fields are called.
fn bumps_generation(res: &Resource, current: &Value, next: &Value) -> bool {
    if !resources::is_custom(res) {
        return next.get("spec").is_some() && spec_part(next) != spec_part(current);
    }
    let part = |o: &Value| {
        let mut v = o.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if res.has("status") {
                m.remove("status");
            }
        }
        v
    };
    part(next) != part(current)
}

/// The finalizer that holds an owner deleted with `propagationPolicy: Foreground`.
const FOREGROUND_DELETION: &str = "foregroundDeletion";
const ORPHAN: &str = "orphan";
use super::kinds::NAMESPACE_FINALIZER;

/// Metadata fields a client can never change through PUT or PATCH.
const SERVER_OWNED_META: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "namespace",
];

impl Api {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Self {
        Api {
            store,
            clock,
            alloc: Default::default(),
            quota: Default::default(),
            usage: Default::default(),
        }
    }

    /// The nodes' latest usage reports, which `metrics.k8s.io` serves (plugins read them).
    pub fn usage(&self) -> &super::resource_metrics::Samples {
        &self.usage
    }

    /// The same API handing out pod CIDRs and reserving the DNS IP per `network` (the
    /// defaults otherwise).
    pub fn with_network(mut self, network: super::alloc::ClusterNetwork) -> Self {
        self.alloc = super::alloc::Allocator::new(network);
        self
    }

    pub fn network(&self) -> super::alloc::ClusterNetwork {
        self.alloc.network
    }

    /// Gives every stored Node without a pod CIDR one (Nodes stored before the server handed
    /// them out); returns how many got one. A Node whose update fails is left for its next
    /// update.
    pub fn assign_missing_pod_cidrs(&self) -> Result<usize> {
        let res = resources::by_kind("v1", "Node").expect("nodes are served");
        let list = self.list(res, "", &ListOptions::default())?;
        let mut assigned = 0;
        for n in list["items"].as_array().into_iter().flatten() {
            if n.pointer("/spec/podCIDR")
                .and_then(Value::as_str)
                .is_some_and(|c| !c.is_empty())
            {
                continue;
            }
            let name = meta::name(n).to_string();
            match self.update(res, "", &name, n.clone(), None, &WriteOptions::default()) {
                Ok(v) if v.pointer("/spec/podCIDR").is_some() => assigned += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(node = %name, error = %e, "assigning a pod CIDR failed"),
            }
        }
        Ok(assigned)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> String {
        meta::timestamp((self.clock)())
    }

    fn key(res: &Resource, ns: &str, name: &str) -> String {
        store::key(
            res.group,
            res.plural,
            if res.namespaced { ns } else { "" },
            name,
        )
    }

    pub fn get(&self, res: &'static Resource, ns: &str, name: &str) -> Result<Value> {
        self.store
            .get(&Self::key(res, ns, name))
            .map_err(|e| ApiError::from_store(e, res, name))?
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// A `<Kind>List` with `metadata.resourceVersion`, honouring selectors and pagination.
    /// A list as one JSON value (for callers inside the server; the REST layer sends
    /// [`Api::list_page`] as it is stored).
    pub fn list(&self, res: &'static Resource, ns: &str, opts: &ListOptions) -> Result<Value> {
        let page = self.list_page(res, ns, opts)?;
        let items = ListPage::parse(&page.items)?;
        Ok(json!({
            "kind": res.list_kind(),
            "apiVersion": res.api_version(),
            "metadata": page.metadata(),
            "items": items,
        }))
    }

    /// One page of a list: the matching objects as stored, read one at a time (an object is
    /// parsed only to test selectors), so a list costs the memory of its answer.
    pub(crate) fn list_page(
        &self,
        res: &'static Resource,
        ns: &str,
        opts: &ListOptions,
    ) -> Result<ListPage> {
        let ns = if res.namespaced { ns } else { "" };
        let every_ns = store::prefix(res.group, res.plural, "");
        let after = match &opts.continue_token {
            Some(t) => Some(format!("{every_ns}{}", decode_continue(t)?)),
            None => None,
        };
        let all = opts.labels.is_empty() && opts.fields.is_empty();
        let limit = opts.limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last = String::new();
        let mut remaining = 0usize;
        let rev = self
            .store
            .scan(
                &store::prefix(res.group, res.plural, ns),
                after.as_deref(),
                &mut |key, bytes| {
                    if !all {
                        let o = store::decode(key, bytes)?;
                        if !(opts.labels.matches_object(&o) && opts.fields.matches(&o)) {
                            return Ok(true);
                        }
                    }
                    if limit.is_some_and(|l| items.len() >= l) {
                        remaining += 1;
                    } else {
                        items.push(Bytes::copy_from_slice(bytes));
                        last = key.to_string();
                    }
                    Ok(true)
                },
            )
            .map_err(|e| ApiError::from_store(e, res, ""))?;
        let continue_token = (remaining > 0).then(|| {
            base64::engine::general_purpose::STANDARD
                .encode(last.strip_prefix(every_ns.as_str()).unwrap_or(&last))
        });
        Ok(ListPage {
            rev,
            items,
            continue_token,
            remaining,
        })
    }

    pub fn create(
        &self,
        res: &'static Resource,
        ns: &str,
        obj: Value,
        opts: &WriteOptions,
    ) -> Result<Value> {
        self.create_tracked(res, ns, obj, opts, None)
    }

    /// `create` with the managed fields given (`preset`, by an apply) or tracked as an Update.
    fn create_tracked(
        &self,
        res: &'static Resource,
        ns: &str,
        mut obj: Value,
        opts: &WriteOptions,
        preset: Option<Vec<apply::Entry>>,
    ) -> Result<Value> {
        check_type(res, &mut obj)?;
        super::crd::check_create(res)?;
        let mut obj = opts.decode(res, obj)?;
        let meta_obj = obj
            .as_object_mut()
            .expect("checked")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta_obj.is_object() {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        if res.namespaced {
            match meta_obj.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => meta_obj["namespace"] = json!(ns),
            }
        } else if let Some(m) = meta_obj.as_object_mut() {
            m.remove("namespace");
        }
        let name = match meta_obj.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta_obj.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => {
                    let n = format!("{g}{}", meta::random_suffix());
                    meta_obj["name"] = json!(n);
                    n
                }
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        "",
                        vec![Cause {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    ));
                }
            },
        };
        if res.namespaced {
            self.check_namespace_open(ns)?;
        }
        let now = self.now();
        let m = obj["metadata"].as_object_mut().expect("object");
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("managedFields");
        if obj.get("spec").is_some() {
            obj["metadata"]["generation"] = json!(1);
        } else {
            obj["metadata"]
                .as_object_mut()
                .expect("object")
                .remove("generation");
        }
        kinds::default(res, &mut obj);
        if res.group.is_empty() && res.kind == "Pod" {
            self.service_account_admission(ns, &mut obj);
            self.runtime_class_admission(res, &name, &mut obj)?;
            self.priority_admission(res, &name, &mut obj)?;
        }
        if res.group.is_empty() && res.kind == "PersistentVolumeClaim" {
            self.default_storage_class_admission(&mut obj);
        }
        self.limit_range_defaults(res, ns, &mut obj);
        kinds::on_create(res, &mut obj, &now);
        let managed = preset.unwrap_or_else(|| {
            let manager = opts.manager.as_deref();
            let (v, shapes) = (res.api_version(), CustomShapes(res));
            apply::track_update(&[], None, &obj, manager, &v, None, &now, shapes.of())
        });
        set_managed(&mut obj, &managed);
        let causes = kinds::validate(res, &obj);
        if !causes.is_empty() {
            return Err(ApiError::invalid(res, &name, causes));
        }
        // Held until the object is stored, so no two Services get the same IP or port.
        let _alloc = self.allocate(res, ns, &name, &mut obj, true, !opts.dry_run)?;
        // LimitRanger's checks and the quotas; held until stored (see `super::admission`).
        let _quota = self.admit(res, ns, None, Some(&mut obj))?;
        if opts.dry_run {
            return Ok(obj);
        }
        let stored = self
            .store
            .create(&Self::key(res, ns, &name), obj)
            .map_err(|e| ApiError::from_store(e, res, &name))?;
        self.after_write(res, &name);
        Ok(stored)
    }

    /// What a stored write does beyond the object: a CustomResourceDefinition's kind is
    /// served, changed or taken away, and a definition being deleted finishes when its last
    /// object goes (see [`super::crd`]).
    fn after_write(&self, res: &'static Resource, name: &str) {
        if res.group == super::crd::GROUP && res.kind == "CustomResourceDefinition" {
            super::crd::sync(self, name);
        } else if resources::is_custom(res) {
            super::crd::after_object_write(self, res);
        }
    }

    /// Kubernetes' ServiceAccount admission for a new pod: its ServiceAccount is `default`
    /// unless named (`serviceAccount`, the old field, is kept equal), and a pod that names no
    /// image pull secrets gets its ServiceAccount's. A ServiceAccount not there yet (a
    /// namespace just made, whose `default` the serviceaccount plugin has not created) is not
    /// an error here: the pod just gets no pull secrets from it.
    fn service_account_admission(&self, ns: &str, pod: &mut Value) {
        let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let named = |k: &str| {
            spec.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let sa = named("serviceAccountName")
            .or_else(|| named("serviceAccount"))
            .unwrap_or_else(|| "default".into());
        spec.insert("serviceAccountName".into(), json!(sa));
        spec.insert("serviceAccount".into(), json!(sa));
        let has_secrets = spec
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if has_secrets {
            return;
        }
        let Some(accounts) = resources::by_kind("v1", "ServiceAccount") else {
            return;
        };
        let secrets = self
            .get(accounts, ns, &sa)
            .ok()
            .and_then(|a| a.get("imagePullSecrets").cloned())
            .filter(|s| s.as_array().is_some_and(|a| !a.is_empty()));
        if let Some(secrets) = secrets {
            spec.insert("imagePullSecrets".into(), secrets);
        }
    }

    /// Kubernetes' `RuntimeClass` admission of a new pod ([`kinds::runtimeclass::admit`]);
    /// a refusal is the plugin's 403.
    fn runtime_class_admission(&self, res: &Resource, name: &str, pod: &mut Value) -> Result<()> {
        let class = pod
            .pointer("/spec/runtimeClassName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(String::from);
        let class = match (class, resources::by_kind("node.k8s.io/v1", "RuntimeClass")) {
            (Some(c), Some(classes)) => self.get_if_exists(classes, "", &c)?,
            _ => None,
        };
        kinds::runtimeclass::admit(pod, class.as_ref()).map_err(|why| refused(res, name, &why))
    }

    /// Kubernetes' `Priority` admission of a new pod ([`kinds::priorityclass::admit`]): the
    /// class it names, or the `globalDefault` one (the newest if several); a refusal is 403.
    fn priority_admission(&self, res: &Resource, name: &str, pod: &mut Value) -> Result<()> {
        let Some(classes) = resources::by_kind("scheduling.k8s.io/v1", "PriorityClass") else {
            return Ok(());
        };
        let named = pod
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(String::from);
        let class = match &named {
            Some(c) => self.get_if_exists(classes, "", c)?,
            None => {
                let list = self.list(classes, "", &Default::default())?;
                list["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| kinds::priorityclass::is_global_default(c))
                    .max_by_key(|c| {
                        (
                            c.pointer("/metadata/creationTimestamp")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            meta::name(c).to_string(),
                        )
                    })
                    .cloned()
            }
        };
        kinds::priorityclass::admit(pod, named.as_deref(), class.as_ref())
            .map_err(|why| refused(res, name, &why))
    }

    /// The object, or `None` when there is none.
    pub(crate) fn get_if_exists(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        match self.get(res, ns, name) {
            Ok(obj) => Ok(Some(obj)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Kubernetes' `DefaultStorageClass` admission: a new claim that names no class (the field
    /// absent, not `""`, which asks for no class) gets the default one, the newest if several
    /// are marked; none marked leaves it unset.
    fn default_storage_class_admission(&self, pvc: &mut Value) {
        if pvc
            .pointer("/spec/storageClassName")
            .is_some_and(|c| !c.is_null())
        {
            return;
        }
        let Some(classes) = resources::by_kind("storage.k8s.io/v1", "StorageClass") else {
            return;
        };
        let Ok(list) = self.list(classes, "", &Default::default()) else {
            return;
        };
        let default = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| kinds::storageclass::is_default(c))
            .max_by(|a, b| {
                let created = |o: &Value| o.pointer("/metadata/creationTimestamp").cloned();
                created(a)
                    .map(|v| v.to_string())
                    .cmp(&created(b).map(|v| v.to_string()))
                    .then_with(|| meta::name(b).cmp(meta::name(a)))
            });
        if let (Some(c), Some(spec)) = (default, pvc.get_mut("spec").and_then(Value::as_object_mut))
        {
            spec.insert("storageClassName".into(), json!(meta::name(c)));
        }
    }

    /// Assigns a Service's cluster IP and node ports, or a Node's pod CIDR; the guard must be
    /// held until the write is stored. Other kinds need nothing.
    fn allocate(
        &self,
        res: &Resource,
        ns: &str,
        name: &str,
        obj: &mut Value,
        creating: bool,
        claim: bool,
    ) -> Result<Option<std::sync::MutexGuard<'_, ()>>> {
        // A dry run picks values but claims none (it stores nothing).
        let store = claim.then_some(self.store.as_ref());
        let allocated = match (res.group, res.kind) {
            ("", "Service") => self
                .alloc
                .service(self.store.as_ref(), store, ns, name, obj),
            ("", "Node") => self
                .alloc
                .node(self.store.as_ref(), store, name, obj, creating),
            _ => return Ok(None),
        };
        match allocated {
            Ok(Ok(guard)) => Ok(Some(guard)),
            Ok(Err(causes)) => Err(ApiError::invalid(res, name, causes)),
            Err(e) => Err(ApiError::from_store(e, res, name)),
        }
    }

    fn check_namespace_open(&self, ns: &str) -> Result<()> {
        let nsres = resources::by_kind("v1", "Namespace").expect("namespaces are served");
        let n = self.get(nsres, "", ns)?;
        if n.pointer("/metadata/deletionTimestamp").is_some()
            || n.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
        {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// PUT of the object (`sub` None) or of its status (`sub` Some("status")).
    pub fn update(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        obj: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Value> {
        self.update_tracked(res, ns, name, obj, sub, opts, None)
    }

    /// `update` with the managed fields given (`preset`, by an apply) or tracked as an Update.
    #[allow(clippy::too_many_arguments)] // update's parameters and the apply's ownership
    fn update_tracked(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        mut obj: Value,
        sub: Option<&str>,
        opts: &WriteOptions,
        preset: Option<Vec<apply::Entry>>,
    ) -> Result<Value> {
        check_type(res, &mut obj)?;
        super::crd::check_served(res)?;
        let obj = opts.decode(res, obj)?;
        let body_name = obj.pointer("/metadata/name").and_then(Value::as_str);
        if let Some(n) = body_name
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced
            && let Some(n) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && !n.is_empty()
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let expected = match obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) if !rv.is_empty() => Some(parse_rv(res, name, rv)?),
            _ => None,
        };
        let current = self.get(res, ns, name)?;
        if let Some(exp) = expected
            && store::revision_of(&current) != Some(exp)
        {
            return Err(ApiError::conflict(res, name));
        }
        let mut next = if sub == Some("status") {
            let mut n = current.clone();
            n["status"] = obj.get("status").cloned().unwrap_or(json!({}));
            let causes = kinds::validate_status(res, &current, &mut n);
            if !causes.is_empty() {
                return Err(ApiError::invalid(res, name, causes));
            }
            n
        } else {
            let mut n = obj;
            if res.has("status") {
                match current.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().expect("object").remove("status");
                    }
                }
            }
            n
        };
        // Server-owned metadata always comes from the stored object.
        {
            if !next.get("metadata").is_some_and(Value::is_object) {
                next["metadata"] = json!({});
            }
            let nm = next["metadata"].as_object_mut().expect("object");
            nm.insert("name".into(), json!(name));
            for f in SERVER_OWNED_META {
                match current["metadata"].get(*f) {
                    Some(v) => {
                        nm.insert((*f).into(), v.clone());
                    }
                    None => {
                        nm.remove(*f);
                    }
                }
            }
            // Clients never write managedFields directly; they are tracked below.
            match current["metadata"].get("managedFields") {
                Some(v) => nm.insert("managedFields".into(), v.clone()),
                None => nm.remove("managedFields"),
            };
        }
        if let Some(m) = &preset {
            set_managed(&mut next, m);
        }
        let mut _alloc = None;
        if sub.is_none() {
            kinds::prepare_update(res, &current, &mut next);
            kinds::default(res, &mut next);
            let update_first = kinds::update_checks_first(res);
            let mut causes = if update_first {
                kinds::validate_update(res, &current, &next)
            } else {
                Vec::new()
            };
            causes.extend(kinds::validate_replacing(res, &next, Some(&current)));
            if !causes.is_empty() {
                return Err(ApiError::invalid(res, name, causes));
            }
            if let Some(msg) = kinds::immutable_change(res, &current, &next) {
                return Err(ApiError::invalid(
                    res,
                    name,
                    vec![Cause::forbidden(msg.0, msg.1)],
                ));
            }
            let causes = if update_first {
                Vec::new()
            } else {
                kinds::validate_update(res, &current, &next)
            };
            if !causes.is_empty() {
                return Err(ApiError::invalid(res, name, causes));
            }
            _alloc = self.allocate(res, ns, name, &mut next, false, !opts.dry_run)?;
            if bumps_generation(res, &current, &next) {
                let g = current
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                next["metadata"]["generation"] = json!(g + 1);
            }
        }
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if next == current {
            // A no-op write stores nothing and wakes no watcher, as in Kubernetes.
            return Ok(current);
        }
        if preset.is_none() {
            let managed = apply::track_update(
                &apply::managed_fields(&current),
                Some(&current),
                &next,
                opts.manager.as_deref(),
                &res.api_version(),
                sub,
                &self.now(),
                CustomShapes(res).of(),
            );
            set_managed(&mut next, &managed);
        }
        // The quotas, held until stored; a write that removes the object counts as a delete.
        let gone = next.pointer("/metadata/deletionTimestamp").is_some()
            && meta::finalizers(&next).is_empty();
        let _quota = self.admit(res, ns, Some(&current), (!gone).then_some(&mut next))?;
        if opts.dry_run {
            return Ok(next);
        }
        let deleting = next.pointer("/metadata/deletionTimestamp").is_some();
        let spec_finalized = res.kind != "Namespace"
            || next
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty());
        if deleting && meta::finalizers(&next).is_empty() && spec_finalized {
            // The last finalizer went away: the object is gone now.
            let rev = store::revision_of(&current);
            let gone = self
                .store
                .delete(&Self::key(res, ns, name), rev)
                .map_err(|e| ApiError::from_store(e, res, name))?;
            if res.group.is_empty() {
                self.alloc
                    .release(self.store.as_ref(), res.kind, ns, name, &gone);
            }
            self.after_write(res, name);
            return Ok(gone);
        }
        let stored = self
            .store
            .update(
                &Self::key(res, ns, name),
                next,
                store::revision_of(&current),
            )
            .map_err(|e| ApiError::from_store(e, res, name))?;
        self.after_write(res, name);
        Ok(stored)
    }

    /// PATCH; retried on a conflict with a concurrent writer unless the patch itself pins a
    /// resourceVersion (then the conflict is the caller's to see).
    #[allow(clippy::too_many_arguments)] // the REST verb's own parameters, one each
    pub fn patch(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        body: &Value,
        kind: PatchType,
        opts: &WriteOptions,
    ) -> Result<Value> {
        self.patch_as(res, ns, name, sub, body, kind, opts, None)
    }

    /// [`Api::patch`] by a client that sees the object in a retired version (`view`): the
    /// patch applies to the object as that version presents it, and the result is converted
    /// back before it is stored. The stored object is returned.
    #[allow(clippy::too_many_arguments)] // patch's parameters and the version
    pub(crate) fn patch_as(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        body: &Value,
        kind: PatchType,
        opts: &WriteOptions,
        view: Option<&'static resources::Retired>,
    ) -> Result<Value> {
        for _ in 0..5 {
            let current = super::retired::outbound(view, self.get(res, ns, name)?)?;
            let patched = patch::apply(&current, body, kind).map_err(|e| patch_error(kind, e))?;
            let pinned = store::revision_of(&patched) != store::revision_of(&current);
            let patched = super::retired::inbound(view, patched)?;
            match self.update(res, ns, name, patched, sub, opts) {
                Err(e) if e.reason == "Conflict" && !pinned => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// Server-side apply (`application/apply-patch+yaml`) of `config` by `manager`: merges it
    /// into the live object (creating it if missing) with field ownership, see
    /// [`kedge_core::apply`]. Returns the object and whether it was created.
    #[allow(clippy::too_many_arguments)] // the REST verb's own parameters, one each
    pub fn apply(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        mut config: Value,
        manager: &str,
        force: bool,
        opts: &WriteOptions,
    ) -> Result<(Value, bool)> {
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the apply configuration must be an object",
            ));
        }
        for f in ["apiVersion", "kind"] {
            if config
                .get(f)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(format!(
                    "error decoding patch: Object '{}' is missing in the apply configuration",
                    if f == "kind" { "Kind" } else { "apiVersion" }
                )));
            }
        }
        check_type(res, &mut config)?;
        match config.pointer("/metadata/name").and_then(Value::as_str) {
            Some(n) if n == name => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    other.unwrap_or_default()
                )));
            }
        }
        // Status belongs to the status subresource; server-owned metadata to the server.
        config.as_object_mut().expect("object").remove("status");
        if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            for f in SERVER_OWNED_META.iter().filter(|f| **f != "namespace") {
                m.remove(*f);
            }
        }
        let pinned = config.pointer("/metadata/resourceVersion").is_some();
        let api_version = res.api_version();
        let shapes = CustomShapes(res);
        for _ in 0..5 {
            let current = self.get_if_exists(res, ns, name)?;
            let managed = current
                .as_ref()
                .map(apply::managed_fields)
                .unwrap_or_default();
            let now = self.now();
            let req = ApplyRequest {
                manager,
                api_version: &api_version,
                force,
                now: &now,
                shapes: shapes.of(),
            };
            let out = apply::apply(current.as_ref(), &managed, &config, &req)
                .map_err(|e| apply_error(res, name, e))?;
            let mut obj = out.object;
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("managedFields");
            }
            let result = match current {
                None => self
                    .create_tracked(res, ns, obj, opts, Some(out.managed))
                    .map(|o| (o, true)),
                Some(_) => self
                    .update_tracked(res, ns, name, obj, None, opts, Some(out.managed))
                    .map(|o| (o, false)),
            };
            match result {
                Err(e) if matches!(e.reason, "Conflict" | "AlreadyExists") && !pinned => {
                    continue;
                }
                other => return other,
            }
        }
        Err(ApiError::conflict(res, name))
    }

    pub fn delete(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        // A concurrent write (a controller's status update) between our read and our write
        // is not the caller's conflict unless they pinned a resourceVersion: try again on the
        // fresh object, as kube-apiserver's GuaranteedUpdate does.
        let mut attempts = 0;
        loop {
            match self.delete_once(res, ns, name, opts) {
                Err(e)
                    if e.reason == "Conflict"
                        && opts.precondition_rv.is_none()
                        && opts.precondition_uid.is_none()
                        && attempts < 16 =>
                {
                    attempts += 1;
                }
                Ok(v) => {
                    if !opts.dry_run {
                        self.after_write(res, name);
                    }
                    return Ok(v);
                }
                other => return other,
            }
        }
    }

    fn delete_once(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        let current = self.get(res, ns, name)?;
        if let Some(uid) = &opts.precondition_uid
            && meta::uid(&current) != uid
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::uid(&current)
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                != Some(rv)
        {
            return Err(ApiError::conflict(res, name));
        }
        if opts.dry_run {
            return Ok(current);
        }
        let rev = store::revision_of(&current);
        let key = Self::key(res, ns, name);
        // The namespace's quota statuses follow the delete (see `super::admission`).
        let _quota = self.admit(res, ns, Some(&current), None)?;
        let propagation = opts.propagation.unwrap_or(Propagation::Background);

        if res.kind == "Namespace" {
            return self.delete_namespace(res, name, current);
        }

        // Pods on a node terminate gracefully: the agent stops them, then confirms with a
        // zero grace period.
        if res.kind == "Pod" {
            let bound = current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some();
            let grace = opts.grace_period_seconds.unwrap_or_else(|| {
                current
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            let terminating = current.pointer("/metadata/deletionTimestamp").is_some();
            let finished = matches!(
                current.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            if bound && grace > 0 && !finished {
                let current_grace = current
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                if terminating && current_grace.is_some_and(|g| g <= grace) {
                    // Already terminating as soon or sooner: nothing to change. A second
                    // delete with a shorter grace period shortens it, as in Kubernetes.
                    return Ok(current);
                }
                let mut next = current.clone();
                let at = (self.clock)() + chrono::Duration::seconds(grace);
                next["metadata"]["deletionTimestamp"] = json!(meta::timestamp(at));
                next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                return self
                    .store
                    .update(&key, next, rev)
                    .map_err(|e| ApiError::from_store(e, res, name));
            }
        }

        // What happens to dependents is the garbage collector's work (a plugin), as in
        // Kubernetes: foreground and orphan deletions leave the object in place, marked and
        // holding the policy's finalizer, for the collector to finish; a background deletion
        // removes it now and the collector deletes its dependents when it sees it gone.
        let mut finalizers = meta::finalizers(&current);
        let policy_finalizer = match propagation {
            Propagation::Foreground => Some(FOREGROUND_DELETION),
            Propagation::Orphan => Some(ORPHAN),
            Propagation::Background => None,
        };
        if let Some(f) = policy_finalizer {
            // A new policy replaces the other one (kube-apiserver does the same).
            finalizers.retain(|x| x != FOREGROUND_DELETION && x != ORPHAN);
            finalizers.push(f.to_string());
        }
        if !finalizers.is_empty() {
            // Finalizers hold the object until their controllers remove them.
            let mut next = current.clone();
            next["metadata"]["finalizers"] = json!(finalizers);
            if next.pointer("/metadata/deletionTimestamp").is_none() {
                next["metadata"]["deletionTimestamp"] = json!(self.now());
                next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            }
            if next == current {
                return Ok(current);
            }
            return self
                .store
                .update(&key, next, rev)
                .map_err(|e| ApiError::from_store(e, res, name));
        }
        let gone = self
            .store
            .delete(&key, rev)
            .map_err(|e| ApiError::from_store(e, res, name))?;
        if res.group.is_empty() {
            self.alloc
                .release(self.store.as_ref(), res.kind, ns, name, &gone);
        }
        Ok(gone)
    }

    /// Marks the namespace Terminating and holds it with the `kubernetes` finalizer in
    /// `spec.finalizers`: the namespace controller (a plugin) deletes everything in it, then
    /// drops the finalizer, and the namespace is gone.
    fn delete_namespace(
        &self,
        res: &'static Resource,
        name: &str,
        current: Value,
    ) -> Result<Value> {
        if name == "default" || name == "kube-system" {
            return Err(ApiError::forbidden(format!(
                "namespace \"{name}\" is protected and cannot be deleted"
            )));
        }
        let mut next = current.clone();
        if next.pointer("/metadata/deletionTimestamp").is_none() {
            next["metadata"]["deletionTimestamp"] = json!(self.now());
            next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        }
        next["status"]["phase"] = json!("Terminating");
        let mut finalizers: Vec<Value> = next
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == NAMESPACE_FINALIZER) {
            // A namespace from before spec.finalizers was set on creation.
            finalizers.push(json!(NAMESPACE_FINALIZER));
            next["spec"]["finalizers"] = json!(finalizers);
        }
        if next == current {
            return Ok(current);
        }
        self.store
            .update(
                &Self::key(res, "", name),
                next,
                store::revision_of(&current),
            )
            .map_err(|e| ApiError::from_store(e, res, name))
    }

    /// `pods/binding`: assigns a pod to a node exactly once.
    pub fn bind(&self, ns: &str, name: &str, binding: &Value) -> Result<Value> {
        let res = resources::by_kind("v1", "Pod").expect("pods are served");
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::invalid(res, name, vec![Cause::required("target.name")]))?;
        let current = self.get(res, ns, name)?;
        // A Binding naming a uid is for that pod only, not a namesake created since
        // (kube-scheduler sends its pod's uid; kube-apiserver checks it the same way).
        if let Some(uid) = binding
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
        {
            let theirs = meta::uid(&current);
            if theirs != uid {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on pods/binding \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {theirs}"
                    ),
                ));
            }
        }
        if let Some(existing) = current.pointer("/spec/nodeName").and_then(Value::as_str) {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        set_condition(&mut next, "PodScheduled", "True", None, None, &self.now());
        self.store
            .update(
                &Self::key(res, ns, name),
                next,
                store::revision_of(&current),
            )
            .map_err(|e| ApiError::from_store(e, res, name))
    }

    /// The `scale` subresource as an autoscaling/v1 Scale.
    pub(crate) fn get_scale(&self, res: &'static Resource, ns: &str, name: &str) -> Result<Value> {
        let paths = Self::scale_paths(res)?;
        let obj = self.get(res, ns, name)?;
        Ok(scale_of(&obj, &paths))
    }

    fn scale_paths(res: &Resource) -> Result<super::crd::ScalePaths> {
        super::crd::scale_paths(res).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({}/scale)",
                    res.plural
                ),
            )
        })
    }

    pub(crate) fn update_scale(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        scale: &Value,
        opts: &WriteOptions,
    ) -> Result<Value> {
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                res,
                name,
                vec![Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.replicas".into(),
                    // Unquoted, as Go prints a number.
                    message: format!(
                        "Invalid value: {replicas}: must be greater than or equal to 0"
                    ),
                }],
            ));
        }
        let paths = Self::scale_paths(res)?;
        let mut obj = self.get(res, ns, name)?;
        if let Some(rv) = scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && !rv.is_empty()
        {
            obj["metadata"]["resourceVersion"] = json!(rv);
        }
        set_pointer(&mut obj, &paths.spec_replicas, json!(replicas));
        let updated = self.update(res, ns, name, obj, None, opts)?;
        Ok(scale_of(&updated, &paths))
    }

    /// A watch over one resource with selectors. `from` None means "send the current objects
    /// as ADDED first" (resourceVersion unset or "0").
    ///
    /// Nothing is buffered per watcher beyond one chunk: the initial objects are read from a
    /// snapshot a chunk at a time as the client takes them, and history and live events from
    /// the store's shared ring or log, filtered by the selectors before any object is loaded.
    pub fn watch(
        &self,
        res: &'static Resource,
        ns: &str,
        labels: LabelSelector,
        fields: FieldSelector,
        from: Option<Revision>,
    ) -> Result<ApiWatch> {
        let ns = if res.namespaced { ns } else { "" };
        let prefix = store::prefix(res.group, res.plural, ns);
        let selectors = Arc::new((labels, fields));
        let (initial, start) = match from {
            Some(r) => (None, r),
            None => {
                let snap = self
                    .store
                    .snapshot(&prefix)
                    .map_err(|e| ApiError::from_store(e, res, ""))?;
                let rev = snap.revision();
                (Some(snap), rev)
            }
        };
        let mut inner = self
            .store
            .watch(&prefix, start)
            .map_err(|e| ApiError::from_store(e, res, ""))?;
        if !(selectors.0.is_empty() && selectors.1.is_empty()) {
            let s = selectors.clone();
            inner = inner.with_filter(Box::new(move |e| {
                s.matches(&e.attrs) || e.prev_attrs.as_ref().is_some_and(|p| s.matches(p))
            }));
        }
        Ok(ApiWatch {
            initial,
            pending: VecDeque::new(),
            start,
            inner,
            selectors,
        })
    }
}

/// The selectors of a watch, matched against objects or their [`store::attrs`].
trait Selects {
    fn matches(&self, o: &Value) -> bool;
}

impl Selects for (LabelSelector, FieldSelector) {
    fn matches(&self, o: &Value) -> bool {
        self.0.matches_object(o) && self.1.matches(o)
    }
}

/// A filtered watch: an object that starts (stops) matching the selectors arrives as ADDED
/// (DELETED), as Kubernetes' watch cache reports it. Objects arrive as the stored JSON.
pub struct ApiWatch {
    /// The initial state still to send (watches without a resourceVersion).
    initial: Option<Box<dyn store::Snapshot>>,
    /// A chunk of it, read and not yet sent.
    pending: VecDeque<Bytes>,
    /// The revision the initial events (if any) are consistent at.
    start: Revision,
    inner: store::Watch,
    selectors: Arc<(LabelSelector, FieldSelector)>,
}

impl ApiWatch {
    pub async fn next(&mut self) -> Option<Result<(EventType, Bytes)>> {
        if let Err(e) = self.fill_initial() {
            return Some(Err(e));
        }
        if let Some(o) = self.pending.pop_front() {
            return Some(Ok((EventType::Added, o)));
        }
        loop {
            let event = match self.inner.next().await? {
                Ok(e) => e,
                Err(e @ store::Error::Expired { .. }) => {
                    return Some(Err(ApiError::expired(e.to_string())));
                }
                Err(e) => return Some(Err(ApiError::internal(e.to_string()))),
            };
            let now = self.selectors.matches(&event.attrs);
            let before = event
                .prev_attrs
                .as_ref()
                .is_some_and(|p| self.selectors.matches(p));
            let kind = match (event.kind, before, now) {
                (EventType::Deleted, true, _) => EventType::Deleted,
                (EventType::Deleted, false, _) => continue,
                (_, true, true) => EventType::Modified,
                (_, false, true) => EventType::Added,
                (_, true, false) => EventType::Deleted,
                (_, false, false) => continue,
            };
            return Some(Ok((kind, event.object.clone())));
        }
    }

    /// Reads the initial state's next chunk that holds a matching object, unless one is
    /// pending or the initial state is all sent.
    fn fill_initial(&mut self) -> Result<()> {
        while self.pending.is_empty() {
            let Some(snap) = self.initial.as_mut() else {
                return Ok(());
            };
            let chunk = store::blocking(|| snap.next_chunk()).map_err(|e| match e {
                store::Error::Expired { .. } => ApiError::expired(e.to_string()),
                e => ApiError::internal(e.to_string()),
            })?;
            if chunk.is_empty() {
                self.initial = None;
                return Ok(());
            }
            let all = self.selectors.0.is_empty() && self.selectors.1.is_empty();
            for (key, bytes) in chunk {
                let wanted =
                    all || store::decode(&key, &bytes).is_ok_and(|o| self.selectors.matches(&o));
                if wanted {
                    self.pending.push_back(bytes);
                }
            }
        }
        Ok(())
    }

    /// Whether synthetic ADDED events for the initial state are still to come.
    pub(crate) fn has_initial(&mut self) -> bool {
        // An unreadable snapshot surfaces as an error from `next`.
        let _ = self.fill_initial();
        !self.pending.is_empty()
    }

    /// The revision the watch started at (the initial state's, for watch-list).
    pub(crate) fn start_revision(&self) -> Revision {
        self.start
    }

    /// The revision the watch has reached (for bookmarks).
    pub fn revision(&self) -> Revision {
        self.inner.revision()
    }
}

/// A patch that cannot be applied. JSON patch failures are reported as kube-apiserver does,
/// as a generic 422 whose cause carries the detail (kubectl prints `The request is invalid:
/// the server rejected our request due to an error in our request`).
pub(super) fn patch_error(kind: PatchType, e: patch::Error) -> ApiError {
    if let patch::Error::BadFormat(why) = e {
        return ApiError::bad_request(why);
    }
    match kind {
        PatchType::Json => ApiError {
            details: Some(json!({"causes": [{"reason": "UnexpectedServerResponse",
                "message": e.to_string()}]})),
            ..ApiError::new(
                422,
                "Invalid",
                "the server rejected our request due to an error in our request",
            )
        },
        _ => ApiError::new(422, "Invalid", e.to_string()),
    }
}

/// Server-side apply's list and map types for a custom kind: its schema's (see
/// [`apply::Shapes`]); built-in kinds merge by kedge's built-in rules.
struct CustomShapes<'a>(&'a Resource);

impl CustomShapes<'_> {
    fn of(&self) -> Option<&dyn apply::Shapes> {
        resources::is_custom(self.0).then_some(self as _)
    }
}

impl apply::Shapes for CustomShapes<'_> {
    fn list_at(&self, path: &[&str]) -> Option<kedge_core::crd_schema::ListType> {
        super::crd::list_type_at(self.0, path)
    }

    fn map_at(&self, path: &[&str]) -> Option<kedge_core::crd_schema::MapType> {
        super::crd::map_type_at(self.0, path)
    }
}

/// Stores `managed` as the object's `metadata.managedFields` (none: the field goes).
fn set_managed(obj: &mut Value, managed: &[apply::Entry]) {
    let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    match apply::managed_fields_json(managed) {
        Some(v) => m.insert("managedFields".into(), v),
        None => m.remove("managedFields"),
    };
}

/// An apply's failure as kube-apiserver reports it: conflicts as a 409 whose causes kubectl
/// lists before its `--force-conflicts` hint.
fn apply_error(res: &Resource, name: &str, e: ApplyError) -> ApiError {
    match e {
        ApplyError::Conflicts(list) => {
            let causes: Vec<Value> = list
                .iter()
                .map(|c| {
                    json!({"reason": "FieldManagerConflict",
                        "message": format!("conflict with {}", c.manager), "field": c.field})
                })
                .collect();
            ApiError {
                details: Some(json!({"causes": causes})),
                ..ApiError::new(409, "Conflict", apply::conflict_message(&list))
            }
        }
        ApplyError::Config(c) => ApiError::invalid(
            res,
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                field: String::new(),
                message: c.to_string(),
            }],
        ),
    }
}

/// Checks that the body is an object and fills or checks its `apiVersion` / `kind` against the
/// URL's resource.
fn check_type(res: &Resource, obj: &mut Value) -> Result<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let want_av = res.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        // A custom object stored under an earlier storage version of its definition reads
        // back with that apiVersion; written back, it is the same object (the None strategy:
        // versions differ in name only, and the schema of this one checks it).
        Some(av)
            if av != want_av
                && resources::is_custom(res)
                && av.split_once('/').is_some_and(|(g, _)| g == res.group) =>
        {
            obj["apiVersion"] = json!(want_av);
        }
        Some(av) if av != want_av => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
        Some(_) => {}
        None => obj["apiVersion"] = json!(want_av),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != res.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
        Some(_) => {}
        None => obj["kind"] = json!(res.kind),
    }
    Ok(())
}

fn decode_continue(token: &str) -> Result<String> {
    base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::bad_request("continue key is not valid"))
}

/// Sets the value at a JSON pointer of plain object keys, making the objects on the way.
fn set_pointer(obj: &mut Value, ptr: &str, v: Value) {
    let mut at = obj;
    let keys: Vec<&str> = ptr.split('/').skip(1).collect();
    for (i, k) in keys.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        if i + 1 == keys.len() {
            at[*k] = v;
            return;
        }
        at = &mut at[*k];
    }
}

fn scale_of(obj: &Value, paths: &super::crd::ScalePaths) -> Value {
    let selector = if let Some(p) = &paths.label_selector {
        // A custom kind's selector is kept in its string form.
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    } else if obj.get("kind").and_then(Value::as_str) == Some("ReplicationController") {
        obj.pointer("/spec/selector")
            .map(super::table::map_selector_string)
            .unwrap_or_default()
    } else {
        obj.pointer("/spec/selector")
            .and_then(|s| LabelSelector::from_structured(s).ok())
            .map(|_| selector_string(obj.pointer("/spec/selector").expect("present")))
            .unwrap_or_default()
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta::name(obj),
            "namespace": meta::namespace(obj),
            "uid": meta::uid(obj),
            "resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!("")),
            "creationTimestamp": obj.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null),
        },
        "spec": {"replicas": obj.pointer(&paths.spec_replicas).and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer(&paths.status_replicas).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// The string form of a structured selector (`app=web,tier in (fe)`).
pub(crate) fn selector_string(sel: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(ml) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in ml {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
            let vals: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            parts.push(match e.get("operator").and_then(Value::as_str) {
                Some("In") => format!("{key} in ({})", vals.join(",")),
                Some("NotIn") => format!("{key} notin ({})", vals.join(",")),
                Some("DoesNotExist") => format!("!{key}"),
                _ => key.to_string(),
            });
        }
    }
    parts.join(",")
}

/// An admission plugin's refusal of a new object: 403, worded as kube-apiserver's.
fn refused(res: &Resource, name: &str, why: &str) -> ApiError {
    ApiError {
        details: Some(json!({"name": name, "kind": res.plural})),
        ..ApiError::forbidden(format!("{} {name:?} is forbidden: {why}", res.plural))
    }
}
#[cfg(test)]
mod admission_tests {
    use super::*;
    use kedge_store::redb::{Options, RedbStore};

    /// An API on a fresh store with the `default` namespace (the directory holds the store).
    fn api_with_default_namespace() -> (tempfile::TempDir, Api) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        api.create(
            resources::by_kind("v1", "Namespace").unwrap(),
            "",
            json!({"metadata": {"name": "default"}}),
            &WriteOptions::default(),
        )
        .unwrap();
        (dir, api)
    }

    /// Kubernetes' ServiceAccount admission: `default` unless named, and the ServiceAccount's
    /// image pull secrets for a pod that names none.
    #[test]
    fn pods_get_their_service_account_and_its_pull_secrets() {
        let (_dir, api) = api_with_default_namespace();
        let w = WriteOptions::default();
        let r = |k: &str, v: &str| resources::by_kind(k, v).unwrap();
        api.create(
            r("v1", "ServiceAccount"),
            "default",
            json!({"metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "regcred"}]}),
            &w,
        )
        .unwrap();
        let pod = |name: &str, spec: Value| {
            let mut spec = spec;
            spec["containers"] = json!([{"name": "c", "image": "x:1"}]);
            api.create(
                r("v1", "Pod"),
                "default",
                json!({"metadata": {"name": name}, "spec": spec}),
                &w,
            )
            .unwrap()
        };
        let p = pod("plain", json!({}));
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        assert!(p["spec"].get("imagePullSecrets").is_none());
        let p = pod("pulls", json!({"serviceAccountName": "puller"}));
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]));
        let p = pod(
            "own",
            json!({"serviceAccountName": "puller", "imagePullSecrets": [{"name": "mine"}]}),
        );
        assert_eq!(p["spec"]["imagePullSecrets"], json!([{"name": "mine"}]));
        let p = pod("old-field", json!({"serviceAccount": "puller"}));
        assert_eq!(p["spec"]["serviceAccountName"], "puller");
    }

    /// A Binding naming a uid binds that pod only; without one, by name as before.
    #[test]
    fn a_binding_with_a_uid_refuses_a_namesake() {
        let (_dir, api) = api_with_default_namespace();
        let w = WriteOptions::default();
        let pods = resources::by_kind("v1", "Pod").unwrap();
        let body = json!({"metadata": {"name": "web-0"},
            "spec": {"containers": [{"name": "c", "image": "x:1"}]}});
        let p = api.create(pods, "default", body.clone(), &w).unwrap();
        let uid = meta::uid(&p).to_string();
        assert!(!uid.is_empty());
        let to =
            |node: &str, uid: &str| json!({"metadata": {"uid": uid}, "target": {"name": node}});
        let e = api
            .bind("default", "web-0", &to("n1", "another"))
            .unwrap_err();
        assert_eq!(e.code, 409, "{}", e.message);
        assert!(e.message.contains("Precondition failed"), "{}", e.message);
        let bound = api.bind("default", "web-0", &to("n1", &uid)).unwrap();
        assert_eq!(bound["spec"]["nodeName"], "n1");
        // No uid: by name.
        let mut other = body;
        other["metadata"]["name"] = json!("web-1");
        api.create(pods, "default", other, &w).unwrap();
        let bound = api
            .bind("default", "web-1", &json!({"target": {"name": "n2"}}))
            .unwrap();
        assert_eq!(bound["spec"]["nodeName"], "n2");
    }
}
