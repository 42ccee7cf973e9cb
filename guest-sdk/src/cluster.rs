use k8s_openapi::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bindings::kedge::plugin::cluster as wit;
use crate::{ApiError, DeleteOptions, HasStatus, LogLevel, PodBinding};

/// Result of one API call from a plugin.
pub type ApiResult<T> = Result<T, ApiError>;

/// The API errors a level-triggered reconcile expects and lets pass: `Ok(None)` instead.
///
/// ```
/// use k8s_openapi::api::core::v1::Pod;
/// use kedge_guest::{ApiResultExt, ClusterExt, FakeCluster};
/// let fake = FakeCluster::new();
/// // Deleting what is already gone is done.
/// assert_eq!(fake.delete::<Pod>("default", "web").ignore_not_found(), Ok(None));
/// ```
pub trait ApiResultExt<T> {
    /// `not-found` becomes `Ok(None)`: the object is already gone.
    fn ignore_not_found(self) -> ApiResult<Option<T>>;
    /// `conflict` and `not-found` become `Ok(None)`: the object changed or went away since it
    /// was read, and that change enqueues the key again, so the write has nothing left to do.
    ///
    /// ```
    /// use kedge_guest::{ApiError, ApiResultExt};
    /// let lost: Result<(), ApiError> = Err(ApiError::Conflict("stale".into()));
    /// assert_eq!(lost.ignore_stale(), Ok(None));
    /// let denied: Result<(), ApiError> = Err(ApiError::Forbidden("pods".into()));
    /// assert!(denied.ignore_stale().is_err());
    /// ```
    fn ignore_stale(self) -> ApiResult<Option<T>>;
    /// `already-exists` becomes `Ok(None)`: a create lost the race to a namesake, whose own
    /// event brings the key back.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use kedge_guest::{ApiResultExt, ClusterExt, FakeCluster};
    /// let fake = FakeCluster::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// assert!(fake.create("ns", &cm).ignore_already_exists().unwrap().is_some());
    /// assert_eq!(fake.create("ns", &cm).ignore_already_exists(), Ok(None));
    /// ```
    fn ignore_already_exists(self) -> ApiResult<Option<T>>;
}

impl<T> ApiResultExt<T> for ApiResult<T> {
    fn ignore_not_found(self) -> ApiResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn ignore_stale(self) -> ApiResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::Conflict(_) | ApiError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn ignore_already_exists(self) -> ApiResult<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(ApiError::AlreadyExists(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The cluster as a plugin sees it: the WIT `cluster` interface on `serde_json::Value`.
///
/// Object-safe so reconcile functions take `&dyn Cluster` and tests swap in
/// [`FakeCluster`](crate::FakeCluster). Typed access lives in [`ClusterExt`].
///
/// ```
/// use kedge_guest::{Cluster, FakeCluster};
/// let fake = FakeCluster::new();
/// let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
/// fake.create_object("v1", "ConfigMap", "default", &cm).unwrap();
/// assert!(fake.get_object("v1", "ConfigMap", "default", "a").unwrap().is_some());
/// ```
pub trait Cluster {
    /// Reads one object; `Ok(None)` when it does not exist.
    fn get_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<Value>>;
    /// Lists objects; empty `namespace` means all, empty `label_selector` means everything.
    fn list_objects(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        label_selector: &str,
    ) -> ApiResult<Vec<Value>>;
    /// Creates an object (honours `metadata.generateName`) and returns it as stored.
    fn create_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        body: &Value,
    ) -> ApiResult<Value>;
    /// Replaces an object; a `metadata.resourceVersion` in `body` makes it conditional.
    fn update_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        body: &Value,
    ) -> ApiResult<Value>;
    /// Replaces the `status` of an object (the `/status` subresource).
    fn update_object_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        body: &Value,
    ) -> ApiResult<Value>;
    /// Applies a JSON merge patch (RFC 7386).
    fn patch_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> ApiResult<Value>;
    /// Deletes an object (background propagation).
    fn delete_object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> ApiResult<()>;
    /// Deletes an object with a propagation policy and uid/resourceVersion preconditions.
    fn delete_object_with(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<()>;
    /// The objects whose `metadata.ownerReferences` name the owner with `owner_uid` (of the
    /// kinds the plugin may read).
    fn dependents(&self, owner_uid: &str) -> ApiResult<Vec<Value>>;
    /// Binds a pod to a node (`pods/binding`).
    fn bind_pod(&self, namespace: &str, name: &str, node: &str) -> ApiResult<()>;
    /// Binds several pods at once: the host writes them concurrently, so they share
    /// commits. A binding with a `uid` is refused (`Conflict`) when the pod of that name has
    /// another. One result per binding, in order; at most 512.
    fn bind_pods(&self, bindings: &[PodBinding]) -> Vec<ApiResult<()>> {
        bindings
            .iter()
            .map(|b| {
                if let Some(uid) = &b.uid {
                    let current =
                        self.get_object("v1", "Pod", &b.namespace, &b.name)?.ok_or_else(|| {
                            ApiError::NotFound(format!("pods \"{}\" not found", b.name))
                        })?;
                    let theirs = current.pointer("/metadata/uid").and_then(Value::as_str);
                    if theirs != Some(uid.as_str()) {
                        return Err(ApiError::Conflict(format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            theirs.unwrap_or("")
                        )));
                    }
                }
                self.bind_pod(&b.namespace, &b.name, &b.node)
            })
            .collect()
    }
    /// Creates several objects of one kind at once, `(namespace, body)` each, as
    /// [`Cluster::bind_pods`] does. One result per item, in order; at most 512.
    fn create_objects(
        &self,
        api_version: &str,
        kind: &str,
        items: &[(String, Value)],
    ) -> Vec<ApiResult<Value>> {
        items
            .iter()
            .map(|(ns, body)| self.create_object(api_version, kind, ns, body))
            .collect()
    }
    /// Records `v1` Events, `(namespace, body)` each, best effort: the host queues them and
    /// writes them after this returns, dropping what does not fit its queue (client-go's
    /// event recorder does the same), so a plugin never waits for its Events. Returns how many
    /// were queued. The default writes them here and now ([`Cluster::create_objects`]) and
    /// counts those written.
    fn emit_events(&self, items: &[(String, Value)]) -> ApiResult<usize> {
        Ok(self
            .create_objects("v1", "Event", items)
            .into_iter()
            .filter(Result::is_ok)
            .count())
    }
    /// Current time as RFC 3339 UTC; from the host so tests and replays control it.
    fn now(&self) -> String;
    /// Writes a line to the host's log under the plugin's span.
    fn log(&self, level: LogLevel, message: &str);
}

fn decode<T: DeserializeOwned>(kind: &str, value: Value) -> ApiResult<T> {
    serde_json::from_value(value).map_err(|e| ApiError::Other(format!("decoding {kind}: {e}")))
}

fn encode<T: Serialize>(kind: &str, obj: &T) -> ApiResult<Value> {
    serde_json::to_value(obj).map_err(|e| ApiError::Invalid(format!("encoding {kind}: {e}")))
}

/// Typed access over k8s-openapi types; apiVersion and kind come from [`Resource`], so a
/// call cannot name one kind and send another.
///
/// ```
/// use k8s_openapi::api::core::v1::Pod;
/// use kedge_guest::{ClusterExt, FakeCluster};
/// let fake = FakeCluster::new();
/// let mut pod = Pod::default();
/// pod.metadata.name = Some("web".into());
/// let stored = fake.create("default", &pod).unwrap();
/// assert!(stored.metadata.uid.is_some());
/// assert_eq!(fake.list::<Pod>("default", "").unwrap().len(), 1);
/// ```
pub trait ClusterExt: Cluster {
    /// Reads one object of kind `K`.
    fn get<K: Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> ApiResult<Option<K>> {
        self.get_object(K::API_VERSION, K::KIND, namespace, name)?
            .map(|v| decode(K::KIND, v))
            .transpose()
    }

    /// Lists objects of kind `K` matching a label selector string.
    fn list<K: Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        label_selector: &str,
    ) -> ApiResult<Vec<K>> {
        self.list_objects(K::API_VERSION, K::KIND, namespace, label_selector)?
            .into_iter()
            .map(|v| decode(K::KIND, v))
            .collect()
    }

    /// Creates `obj` in `namespace` and returns the stored object.
    fn create<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: &str,
        obj: &K,
    ) -> ApiResult<K> {
        let body = encode(K::KIND, obj)?;
        decode(
            K::KIND,
            self.create_object(K::API_VERSION, K::KIND, namespace, &body)?,
        )
    }

    /// Replaces `obj`; conditional on its resourceVersion when set.
    fn update<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: &str,
        obj: &K,
    ) -> ApiResult<K> {
        let body = encode(K::KIND, obj)?;
        decode(
            K::KIND,
            self.update_object(K::API_VERSION, K::KIND, namespace, &body)?,
        )
    }

    /// Replaces the status of `obj`.
    fn update_status<K: Resource + Serialize + DeserializeOwned>(
        &self,
        namespace: &str,
        obj: &K,
    ) -> ApiResult<K> {
        let body = encode(K::KIND, obj)?;
        decode(
            K::KIND,
            self.update_object_status(K::API_VERSION, K::KIND, namespace, &body)?,
        )
    }

    /// Writes `status` to `obj` through the status subresource unless it equals the stored
    /// status (an absent one counts as `Default`), the write every reconcile ends with. A
    /// `conflict` or `not-found` is no error: the object changed or went away since it was
    /// read, and that change enqueues it again. Returns the object as stored; `obj` itself
    /// when the status is unchanged, with `status` set when the write lost a race.
    ///
    /// ```
    /// use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
    /// use kedge_guest::{ClusterExt, FakeCluster, Verb};
    /// let fake = FakeCluster::new();
    /// let mut d = Deployment::default();
    /// d.metadata.name = Some("web".into());
    /// let d = fake.create("default", &d).unwrap();
    /// let status = DeploymentStatus { replicas: Some(2), ..Default::default() };
    /// let d = fake.update_status_if_changed("default", &d, status.clone()).unwrap();
    /// fake.update_status_if_changed("default", &d, status).unwrap();
    /// assert_eq!(fake.count(Verb::UpdateStatus, "Deployment"), 1);
    /// ```
    fn update_status_if_changed<K>(
        &self,
        namespace: &str,
        obj: &K,
        status: K::Status,
    ) -> ApiResult<K>
    where
        K: Resource + HasStatus + Serialize + DeserializeOwned + Clone,
    {
        let unchanged = match obj.status() {
            Some(old) => *old == status,
            None => status == K::Status::default(),
        };
        let mut updated = obj.clone();
        if unchanged {
            return Ok(updated);
        }
        *updated.status_mut() = Some(status);
        Ok(self
            .update_status(namespace, &updated)
            .ignore_stale()?
            .unwrap_or(updated))
    }

    /// Applies a JSON merge patch to the named object of kind `K`.
    fn patch_merge<K: Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) -> ApiResult<K> {
        decode(
            K::KIND,
            self.patch_object(K::API_VERSION, K::KIND, namespace, name, patch)?,
        )
    }

    /// Deletes the named object of kind `K`.
    fn delete<K: Resource>(&self, namespace: &str, name: &str) -> ApiResult<()> {
        self.delete_object(K::API_VERSION, K::KIND, namespace, name)
    }

    /// Records a core/v1 Event about `obj`, as `kubectl describe` shows under Events
    /// (`kind` is `Normal` or `Warning`; `component` is the reporting controller, e.g.
    /// `deployment-controller`). The plugin must declare it writes `Event`. Returns the
    /// error for the caller to ignore: a lost event must never fail a reconcile.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::{ConfigMap, Event};
    /// use kedge_guest::{ClusterExt, FakeCluster};
    /// let fake = FakeCluster::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("settings".into());
    /// cm.metadata.namespace = Some("default".into());
    /// fake.record_event(&cm, "Normal", "Updated", "settings changed", "demo").unwrap();
    /// let events = fake.list::<Event>("default", "").unwrap();
    /// assert_eq!(events[0].reason.as_deref(), Some("Updated"));
    /// assert_eq!(events[0].involved_object.name.as_deref(), Some("settings"));
    /// ```
    fn record_event<K>(
        &self,
        obj: &K,
        kind: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) -> ApiResult<()>
    where
        K: Resource
            + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    {
        let (ns, event) = event_body(self, obj, kind, reason, message, component);
        self.create_object("v1", "Event", &ns, &event).map(|_| ())
    }

    /// [`ClusterExt::record_event`] for several objects at once (`(object, kind, reason,
    /// message)` each), best effort ([`Cluster::emit_events`]): the host writes them after
    /// this returns. How many were queued; the errors are the caller's to ignore.
    fn record_events<K>(
        &self,
        events: &[(&K, &str, &str, String)],
        component: &str,
    ) -> ApiResult<usize>
    where
        K: Resource
            + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    {
        let items: Vec<(String, Value)> = events
            .iter()
            .map(|(obj, kind, reason, message)| {
                event_body(self, *obj, kind, reason, message, component)
            })
            .collect();
        self.emit_events(&items)
    }
}

/// The namespace and body of an Event about `obj` ([`ClusterExt::record_event`]).
fn event_body<C, K>(
    cluster: &C,
    obj: &K,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
) -> (String, Value)
where
    C: Cluster + ?Sized,
    K: Resource
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let meta = obj.metadata();
    // Events about cluster-scoped objects live in `default`, their involvedObject has no
    // namespace, and for Nodes the uid is the node's name (what kubelet records and what
    // `kubectl describe node` searches for).
    let involved_ns = meta.namespace.clone();
    let ns = involved_ns.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let uid = if K::KIND == "Node" {
        Some(name.clone())
    } else {
        meta.uid.clone()
    };
    let now = cluster.now();
    // FNV-1a over what makes this event distinct: a unique-enough name suffix.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [
        now.as_str(),
        reason,
        message,
        meta.uid.as_deref().unwrap_or(""),
    ]
    .concat()
    .bytes()
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{h:016x}"), "namespace": ns},
        "involvedObject": {
            "apiVersion": K::API_VERSION, "kind": K::KIND, "namespace": involved_ns,
            "name": name, "uid": uid, "resourceVersion": meta.resource_version,
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    (ns, event)
}

impl<C: Cluster + ?Sized> ClusterExt for C {}

/// The real cluster: every call goes through the component's `kedge:plugin/cluster` imports.
///
/// Only meaningful inside a Wasm component; on native targets the imports are stubs that
/// panic, which is why logic is written against [`Cluster`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCluster;

fn parse_body(kind: &str, text: String) -> ApiResult<Value> {
    serde_json::from_str(&text)
        .map_err(|e| ApiError::Other(format!("host sent invalid JSON for {kind}: {e}")))
}

fn body_text(kind: &str, body: &Value) -> ApiResult<String> {
    serde_json::to_string(body).map_err(|e| ApiError::Invalid(format!("encoding {kind}: {e}")))
}

impl Cluster for HostCluster {
    fn get_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        wit::get(api_version, kind, ns, name)?
            .map(|t| parse_body(kind, t))
            .transpose()
    }

    fn list_objects(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        sel: &str,
    ) -> ApiResult<Vec<Value>> {
        wit::list(api_version, kind, ns, sel)?
            .into_iter()
            .map(|t| parse_body(kind, t))
            .collect()
    }

    fn create_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        parse_body(
            kind,
            wit::create(api_version, kind, ns, &body_text(kind, body)?)?,
        )
    }

    fn update_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        parse_body(
            kind,
            wit::update(api_version, kind, ns, &body_text(kind, body)?)?,
        )
    }

    fn update_object_status(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        parse_body(
            kind,
            wit::update_status(api_version, kind, ns, &body_text(kind, body)?)?,
        )
    }

    fn patch_object(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        patch: &Value,
    ) -> ApiResult<Value> {
        parse_body(
            kind,
            wit::patch(api_version, kind, ns, name, &body_text(kind, patch)?)?,
        )
    }

    fn delete_object(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> ApiResult<()> {
        wit::delete(api_version, kind, ns, name)
    }

    fn delete_object_with(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
        options: &DeleteOptions,
    ) -> ApiResult<()> {
        wit::delete_with(api_version, kind, ns, name, options)
    }

    fn dependents(&self, owner_uid: &str) -> ApiResult<Vec<Value>> {
        wit::dependents(owner_uid)?
            .into_iter()
            .map(|t| parse_body("dependent", t))
            .collect()
    }

    fn bind_pod(&self, ns: &str, name: &str, node: &str) -> ApiResult<()> {
        wit::bind_pod(ns, name, node)
    }

    fn bind_pods(&self, bindings: &[PodBinding]) -> Vec<ApiResult<()>> {
        wit::bind_pods(bindings)
    }

    fn create_objects(
        &self,
        api_version: &str,
        kind: &str,
        items: &[(String, Value)],
    ) -> Vec<ApiResult<Value>> {
        let mut out: Vec<Option<ApiResult<Value>>> = Vec::with_capacity(items.len());
        let mut texts = Vec::with_capacity(items.len());
        for (ns, body) in items {
            match body_text(kind, body) {
                Ok(t) => {
                    texts.push((ns.clone(), t));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        let mut sent = wit::create_all(api_version, kind, &texts).into_iter();
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| match sent.next() {
                    Some(r) => r.and_then(|t| parse_body(kind, t)),
                    None => Err(ApiError::Other("the host answered fewer items".into())),
                })
            })
            .collect()
    }

    fn emit_events(&self, items: &[(String, Value)]) -> ApiResult<usize> {
        let texts = items
            .iter()
            .map(|(ns, body)| Ok((ns.clone(), body_text("Event", body)?)))
            .collect::<ApiResult<Vec<_>>>()?;
        Ok(wit::emit_events(&texts)? as usize)
    }

    fn now(&self) -> String {
        wit::now()
    }

    fn log(&self, level: LogLevel, message: &str) {
        wit::log(level, message)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};

    use crate::{ClusterExt, FakeCluster, Verb};

    fn stored(fake: &FakeCluster) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = Some("web".into());
        fake.create("ns", &d).unwrap()
    }

    #[test]
    fn an_absent_status_equals_the_default_so_nothing_is_written() {
        let fake = FakeCluster::new();
        let d = stored(&fake);
        let back = fake
            .update_status_if_changed("ns", &d, DeploymentStatus::default())
            .unwrap();
        assert_eq!(back, d);
        assert_eq!(fake.count(Verb::UpdateStatus, "Deployment"), 0);
    }

    #[test]
    fn a_lost_race_is_no_error_and_returns_the_object_with_the_new_status() {
        let fake = FakeCluster::new();
        let d = stored(&fake);
        // Someone else writes first: our copy's resourceVersion is stale.
        fake.update("ns", &d).unwrap();
        let status = DeploymentStatus {
            replicas: Some(1),
            ..Default::default()
        };
        let back = fake
            .update_status_if_changed("ns", &d, status.clone())
            .unwrap();
        assert_eq!(back.status, Some(status));
        assert_eq!(fake.count(Verb::UpdateStatus, "Deployment"), 0);
        // Or deletes it.
        fake.delete::<Deployment>("ns", "web").unwrap();
        let status = DeploymentStatus {
            replicas: Some(2),
            ..Default::default()
        };
        assert!(fake.update_status_if_changed("ns", &d, status).is_ok());
    }
}
