//! Guest SDK for kedge plugins: controllers and schedulers compiled to `wasm32-wasip2`
//! components that the kedge host runs against its API server.
//!
//! A plugin implements [`Controller`] and calls [`export_controller!`]; its logic talks to
//! the cluster only through [`Cluster`] so the same code runs against the host
//! ([`HostCluster`]) and, in native unit tests, against [`FakeCluster`]. `?` turns API and
//! JSON errors into the reconcile's [`Error`]. Custom kinds (served from a
//! CustomResourceDefinition) get typed access through [`custom_resource!`], which declares
//! their Rust type; they are then named and used as the k8s-openapi types are.
//!
//! ```
//! use k8s_openapi::api::core::v1::Pod;
//! use kedge_guest::{Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration, Result};
//!
//! struct Noop;
//!
//! impl Controller for Noop {
//!     fn registration() -> Registration {
//!         Registration::new("noop", KindRef::of::<Pod>())
//!     }
//!
//!     fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
//!         let _pod = cluster.get::<Pod>(&key.namespace, &key.name)?;
//!         Ok(Outcome::done())
//!     }
//! }
//!
//! // In the plugin crate (a `cdylib`), this wires `Noop` to the component's exports:
//! // kedge_guest::export_controller!(Noop);
//! ```

mod cluster;
pub mod custom;
mod error;
mod fake;
pub mod meta;
pub mod patch;
pub mod pod;
/// Kubernetes quantities as exact integers: the host's own implementation (`kedge-core`), so a
/// plugin counts exactly what the node enforces.
pub use kedge_core::{cron, quantity};
pub mod selector;
mod status;

/// Bindings generated from `wit/plugin.wit` (world `watching-controller`). Plugins rarely need them
/// directly: the SDK re-exports the record types and wraps the imports in [`HostCluster`].
///
/// The generated code contains `unsafe` (canonical ABI glue); it is produced by the
/// `wit-bindgen` proc macro, so the workspace-wide `unsafe_code = "forbid"` stays in force
/// for everything written by hand.
// Generated ABI shims take one argument per flattened WIT parameter.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "watching-controller",
        path: "wit",
        pub_export_macro: true,
        // So tests can compare outcomes, keys and errors directly.
        additional_derives: [PartialEq, Eq],
        export_macro_name: "__export_controller_world",
        default_bindings_module: "kedge_guest::bindings",
    });
}

pub use bindings::kedge::plugin::cluster::{LogLevel, PodBinding};
pub use bindings::kedge::plugin::types::{
    ApiError, DeleteOptions, KindRef, ObjectKey, Propagation, ReconcileOutcome, Registration,
    Watch, WatchMap,
};
pub use cluster::{ApiResult, ApiResultExt, Cluster, ClusterExt, HostCluster};
pub use custom::CustomResource;
pub use error::{Error, Result};
pub use fake::{FakeCluster, Verb, Write};
pub use status::HasStatus;

/// What a reconcile returns; an alias so plugins need not spell the WIT record's name.
pub type Outcome = ReconcileOutcome;

/// A plugin: its registration and its level-triggered reconcile.
///
/// Both are associated functions (no `self`) because the host may instantiate a plugin
/// fresh for every call, so no state can be relied upon between calls.
///
/// ```
/// # use kedge_guest::*;
/// use k8s_openapi::api::core::v1::{ConfigMap, Event};
/// struct Mine;
/// impl Controller for Mine {
///     fn registration() -> Registration {
///         Registration::new("mine", KindRef::of::<ConfigMap>())
///             .writes([KindRef::of::<ConfigMap>(), KindRef::of::<Event>()])
///     }
///     fn reconcile(_: &dyn Cluster, _: &ObjectKey) -> Result<Outcome> {
///         Ok(Outcome::requeue_after_ms(30_000))
///     }
/// }
/// ```
pub trait Controller {
    /// Declares the kinds this plugin reconciles, watches, reads and writes.
    fn registration() -> Registration;
    /// Brings the world in line with `key`. An `Err` goes through [`Self::error_policy`].
    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome>;
    /// Events of other kinds that enqueue this plugin's objects, found by name or by label
    /// selector rather than by owner reference (see [`Watch`]). None by default.
    fn watches() -> Vec<Watch> {
        Vec::new()
    }
    /// Decides what a failed reconcile of `key` tells the host (kube-runtime's
    /// `error_policy`). By default the error itself: the host logs its text and retries the
    /// key with exponential back-off. Override it to answer some errors with an [`Outcome`]
    /// instead (the host then counts a success: no back-off, no error log), e.g. a fixed
    /// requeue while a dependency is missing.
    ///
    /// ```
    /// # use kedge_guest::*;
    /// struct Patient;
    /// impl Controller for Patient {
    ///     fn registration() -> Registration {
    ///         Registration::new("patient", KindRef::new("v1", "ConfigMap"))
    ///     }
    ///     fn reconcile(_: &dyn Cluster, _: &ObjectKey) -> Result<Outcome> {
    ///         Err(ApiError::Forbidden("secrets".into()).into())
    ///     }
    ///     fn error_policy(cluster: &dyn Cluster, key: &ObjectKey, error: Error) -> Result<Outcome> {
    ///         match error.api() {
    ///             // Waiting for an administrator to widen the grant: look again in a minute.
    ///             Some(ApiError::Forbidden(_)) => {
    ///                 cluster.log(LogLevel::Warn, &format!("{}: {error}", key.name));
    ///                 Ok(Outcome::requeue_after_ms(60_000))
    ///             }
    ///             _ => Err(error),
    ///         }
    ///     }
    /// }
    /// let key = ObjectKey::new("v1", "ConfigMap", "default", "a");
    /// assert_eq!(run::<Patient>(&FakeCluster::new(), &key), Ok(Outcome::requeue_after_ms(60_000)));
    /// ```
    fn error_policy(cluster: &dyn Cluster, key: &ObjectKey, error: Error) -> Result<Outcome> {
        let _ = (cluster, key);
        Err(error)
    }
}

/// One reconcile as the host sees it: [`Controller::reconcile`], an error passed through
/// [`Controller::error_policy`], and what is left rendered as text (the WIT export's
/// `result<reconcile-outcome, string>`). [`export_controller!`] calls it; tests can too.
///
/// ```
/// # use kedge_guest::*;
/// struct Failing;
/// impl Controller for Failing {
///     fn registration() -> Registration {
///         Registration::new("failing", KindRef::new("v1", "ConfigMap"))
///     }
///     fn reconcile(_: &dyn Cluster, _: &ObjectKey) -> Result<Outcome> {
///         Err(Error::msg("spec is missing"))
///     }
/// }
/// let key = ObjectKey::new("v1", "ConfigMap", "default", "a");
/// assert_eq!(run::<Failing>(&FakeCluster::new(), &key), Err("spec is missing".to_string()));
/// ```
pub fn run<C: Controller + ?Sized>(
    cluster: &dyn Cluster,
    key: &ObjectKey,
) -> std::result::Result<Outcome, String> {
    C::reconcile(cluster, key)
        .or_else(|e| C::error_policy(cluster, key, e))
        .map_err(|e| e.to_string())
}

/// Exports a [`Controller`] implementation as the component's `register`, `reconcile` and
/// `watches`.
///
/// Invoke once, at the root of a `cdylib` plugin crate: `kedge_guest::export_controller!(MyType);`
#[macro_export]
macro_rules! export_controller {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __KedgeGuestExport;

        impl $crate::bindings::Guest for __KedgeGuestExport {
            fn register() -> $crate::Registration {
                <$ty as $crate::Controller>::registration()
            }

            fn reconcile(key: $crate::ObjectKey) -> ::core::result::Result<$crate::Outcome, String> {
                $crate::run::<$ty>(&$crate::HostCluster, &key)
            }

            fn watches() -> ::std::vec::Vec<$crate::Watch> {
                <$ty as $crate::Controller>::watches()
            }
        }

        $crate::bindings::__export_controller_world!(
            __KedgeGuestExport with_types_in $crate::bindings
        );
    };
}

impl Registration {
    /// A plugin `name` reconciling `for_kind`, owning, reading and writing nothing yet; the
    /// builder methods below add kinds.
    ///
    /// ```
    /// use k8s_openapi::api::apps::v1::ReplicaSet;
    /// use k8s_openapi::api::core::v1::Pod;
    /// use kedge_guest::{KindRef, Registration};
    /// let r = Registration::new("replicaset", KindRef::of::<ReplicaSet>())
    ///     .owns([KindRef::of::<Pod>()])
    ///     .writes([KindRef::of::<Pod>(), KindRef::of::<ReplicaSet>()]);
    /// assert_eq!(r.owns, vec![KindRef::of::<Pod>()]);
    /// assert!(r.reads.is_empty());
    /// ```
    pub fn new(name: &str, for_kind: KindRef) -> Self {
        Self {
            name: name.to_owned(),
            for_kind,
            owns: Vec::new(),
            reads: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// Adds kinds whose events enqueue their controlling owner (see the WIT `registration`).
    pub fn owns(mut self, kinds: impl IntoIterator<Item = KindRef>) -> Self {
        self.owns.extend(kinds);
        self
    }

    /// Adds kinds the plugin may read without their events enqueueing anything.
    pub fn reads(mut self, kinds: impl IntoIterator<Item = KindRef>) -> Self {
        self.reads.extend(kinds);
        self
    }

    /// Adds kinds the plugin may create, update, patch and delete.
    pub fn writes(mut self, kinds: impl IntoIterator<Item = KindRef>) -> Self {
        self.writes.extend(kinds);
        self
    }
}

impl ReconcileOutcome {
    /// Converged: wait for the next event on the object or something it owns.
    ///
    /// ```
    /// assert_eq!(kedge_guest::Outcome::done().requeue_after_ms, None);
    /// ```
    pub fn done() -> Self {
        Self {
            requeue_after_ms: None,
        }
    }

    /// Look again later even without an event, e.g. while waiting for capacity.
    ///
    /// ```
    /// assert_eq!(kedge_guest::Outcome::requeue_after_ms(5000).requeue_after_ms, Some(5000));
    /// ```
    pub fn requeue_after_ms(ms: u64) -> Self {
        Self {
            requeue_after_ms: Some(ms),
        }
    }
}

impl KindRef {
    /// Builds a kind reference from the two strings manifests use.
    ///
    /// ```
    /// let k = kedge_guest::KindRef::new("apps/v1", "Deployment");
    /// assert_eq!(k.kind, "Deployment");
    /// ```
    pub fn new(api_version: &str, kind: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// Takes apiVersion/kind from a k8s-openapi type so registrations cannot misspell them.
    ///
    /// ```
    /// use k8s_openapi::api::apps::v1::ReplicaSet;
    /// assert_eq!(kedge_guest::KindRef::of::<ReplicaSet>().api_version, "apps/v1");
    /// ```
    pub fn of<K: k8s_openapi::Resource>() -> Self {
        Self::new(K::API_VERSION, K::KIND)
    }

    /// Every kind (`*`/`*`): as `for-kind`, the plugin gets a key for every object of every
    /// kind, and a deletion also enqueues the deleted object's dependents and owners; in
    /// `reads`/`writes`, any kind. Only the garbage collector needs this.
    pub fn every() -> Self {
        Self::new("*", "*")
    }
}

impl Watch {
    /// Events of `K` objects enqueue the `for-kind` objects in their namespace whose label
    /// map at `path` selects them, before or after the change.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::Pod;
    /// let w = kedge_guest::Watch::selector_map::<Pod>("spec.selector");
    /// assert_eq!(w.by, kedge_guest::WatchMap::SelectorMap("spec.selector".into()));
    /// ```
    pub fn selector_map<K: k8s_openapi::Resource>(path: &str) -> Self {
        Self {
            kind: KindRef::of::<K>(),
            by: WatchMap::SelectorMap(path.to_owned()),
        }
    }

    /// The same with a structured `LabelSelector` at `path`.
    pub fn label_selector<K: k8s_openapi::Resource>(path: &str) -> Self {
        Self {
            kind: KindRef::of::<K>(),
            by: WatchMap::LabelSelector(path.to_owned()),
        }
    }

    /// Events of `K` objects enqueue the `for-kind` object of the same namespace and name.
    pub fn same_name<K: k8s_openapi::Resource>() -> Self {
        Self {
            kind: KindRef::of::<K>(),
            by: WatchMap::SameName,
        }
    }
}

impl ObjectKey {
    /// Names one object; `namespace` is empty for cluster-scoped kinds.
    ///
    /// ```
    /// let key = kedge_guest::ObjectKey::new("v1", "Pod", "default", "web-1");
    /// assert_eq!(key.name, "web-1");
    /// ```
    pub fn new(api_version: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Key of a typed object, the usual way tests name what to reconcile.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::Pod;
    /// let key = kedge_guest::ObjectKey::of::<Pod>("default", "web-1");
    /// assert_eq!(key.kind, "Pod");
    /// ```
    pub fn of<K: k8s_openapi::Resource>(namespace: &str, name: &str) -> Self {
        Self::new(K::API_VERSION, K::KIND, namespace, name)
    }
}

impl ApiError {
    /// True for `not-found`, which reconcilers usually treat as "already gone".
    ///
    /// ```
    /// assert!(kedge_guest::ApiError::NotFound("x".into()).is_not_found());
    /// ```
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::NotFound(_))
    }

    /// True for `conflict`: the object changed under us; reconcile again from fresh state.
    ///
    /// ```
    /// assert!(kedge_guest::ApiError::Conflict("x".into()).is_conflict());
    /// ```
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Conflict(_))
    }
}
