//! Guest SDK for kedge plugins: controllers and schedulers compiled to `wasm32-wasip2`
//! components that the kedge host runs against its API server.
//!
//! A plugin implements [`Controller`] and calls [`export_controller!`]; its logic talks to
//! the cluster only through [`Cluster`] so the same code runs against the host
//! ([`HostCluster`]) and, in native unit tests, against [`FakeCluster`].
//!
//! ```
//! use k8s_openapi::api::core::v1::Pod;
//! use kedge_guest::{Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome, Registration};
//!
//! struct Noop;
//!
//! impl Controller for Noop {
//!     fn registration() -> Registration {
//!         Registration {
//!             name: "noop".into(),
//!             for_kind: KindRef::of::<Pod>(),
//!             owns: vec![],
//!             reads: vec![],
//!             writes: vec![],
//!         }
//!     }
//!
//!     fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String> {
//!         let _pod = cluster.get::<Pod>(&key.namespace, &key.name).map_err(|e| e.to_string())?;
//!         Ok(Outcome::done())
//!     }
//! }
//!
//! // In the plugin crate (a `cdylib`), this wires `Noop` to the component's exports:
//! // kedge_guest::export_controller!(Noop);
//! ```

mod cluster;
mod fake;
pub mod meta;
pub mod patch;
pub mod pod;
/// Kubernetes quantities as exact integers: the host's own implementation (`kedge-core`), so a
/// plugin counts exactly what the node enforces.
pub use kedge_core::quantity;
pub mod selector;

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

pub use bindings::kedge::plugin::cluster::LogLevel;
pub use bindings::kedge::plugin::types::{
    ApiError, DeleteOptions, KindRef, ObjectKey, Propagation, ReconcileOutcome, Registration,
    Watch, WatchMap,
};
pub use cluster::{ApiResult, Cluster, ClusterExt, HostCluster};
pub use fake::{FakeCluster, Verb, Write};

/// What a reconcile returns; an alias so plugins need not spell the WIT record's name.
pub type Outcome = ReconcileOutcome;

/// A plugin: its registration and its level-triggered reconcile.
///
/// Both are associated functions (no `self`) because the host may instantiate a plugin
/// fresh for every call, so no state can be relied upon between calls.
///
/// ```
/// # use kedge_guest::*;
/// struct Mine;
/// impl Controller for Mine {
///     fn registration() -> Registration {
///         Registration {
///             name: "mine".into(),
///             for_kind: KindRef::new("v1", "ConfigMap"),
///             owns: vec![], reads: vec![], writes: vec![],
///         }
///     }
///     fn reconcile(_: &dyn Cluster, _: &ObjectKey) -> Result<Outcome, String> {
///         Ok(Outcome::requeue_after_ms(30_000))
///     }
/// }
/// ```
pub trait Controller {
    /// Declares the kinds this plugin reconciles, watches, reads and writes.
    fn registration() -> Registration;
    /// Brings the world in line with `key`; an `Err` makes the host retry with back-off.
    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome, String>;
    /// Events of other kinds that enqueue this plugin's objects, found by name or by label
    /// selector rather than by owner reference (see [`Watch`]). None by default.
    fn watches() -> Vec<Watch> {
        Vec::new()
    }
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
                <$ty as $crate::Controller>::reconcile(&$crate::HostCluster, &key)
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
