//! Typed access to custom kinds (the kinds a CustomResourceDefinition serves).
//!
//! [`custom_resource!`](crate::custom_resource) declares the Rust type of a custom kind —
//! `metadata`, a `spec` and an optional `status` — and implements for it what the SDK's typed
//! calls need: [`k8s_openapi::Resource`] and [`k8s_openapi::Metadata`] (so
//! [`ClusterExt`](crate::ClusterExt)'s `get`, `list`, `create`, `update`, `update_status`,
//! `update_status_if_changed`, `patch_merge`, `delete` and `record_event`,
//! [`KindRef::of`](crate::KindRef::of), [`ObjectKey::of`](crate::ObjectKey::of),
//! [`meta::new_controller_ref`](crate::meta::new_controller_ref) and
//! [`FakeCluster::seed`](crate::FakeCluster::seed) all take it as they take a k8s-openapi
//! type), [`HasStatus`](crate::HasStatus), [`CustomResource`], and serde's `Serialize` and
//! `Deserialize` in the Kubernetes wire format (`apiVersion` and `kind` written, checked when
//! read). The spec and status types are the plugin's own serde types.
//!
//! ```
//! use kedge_guest::{ClusterExt, CustomResource, FakeCluster, KindRef};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
//! pub struct BackupSpec {
//!     pub schedule: String,
//! }
//!
//! #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
//! #[serde(rename_all = "camelCase")]
//! pub struct BackupStatus {
//!     #[serde(default, skip_serializing_if = "Option::is_none")]
//!     pub last_run: Option<String>,
//! }
//!
//! kedge_guest::custom_resource! {
//!     /// A backup of one volume.
//!     pub struct Backup {
//!         group: "example.com",
//!         version: "v1",
//!         plural: "backups",
//!         scope: Namespaced,
//!         spec: BackupSpec,
//!         status: BackupStatus,
//!     }
//! }
//!
//! assert_eq!(KindRef::of::<Backup>(), KindRef::new("example.com/v1", "Backup"));
//! let fake = FakeCluster::new();
//! let made = fake
//!     .create("default", &Backup::new("nightly", BackupSpec { schedule: "@daily".into() }))
//!     .unwrap();
//! assert!(made.metadata.uid.is_some());
//! let back = fake.get::<Backup>("default", "nightly").unwrap().unwrap();
//! assert_eq!(back.spec.schedule, "@daily");
//! let json = serde_json::to_value(&back).unwrap();
//! assert_eq!((json["apiVersion"].as_str(), json["kind"].as_str()), (Some("example.com/v1"), Some("Backup")));
//! ```

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, Metadata, NamespaceResourceScope, Resource};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::HasStatus;

/// A custom kind's Rust type: what [`custom_resource!`](crate::custom_resource) implements.
/// Besides the `Resource` constants (`API_VERSION`, `GROUP`, `VERSION`, `KIND`, and the
/// plural as `URL_PATH_SEGMENT`) it names the plural and the scope the CRD declares, and
/// builds and reads the object's parts.
pub trait CustomResource:
    Resource
    + Metadata<Ty = ObjectMeta>
    + HasStatus
    + Serialize
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
{
    /// The spec type.
    type Spec;
    /// The resource name in URLs and RBAC (`greetings`): the CRD's `spec.names.plural`.
    const PLURAL: &'static str;
    /// Whether the CRD's `spec.scope` is `Namespaced`.
    const NAMESPACED: bool;
    /// A new object named `name` with `spec`, no other metadata and no status.
    fn new(name: &str, spec: Self::Spec) -> Self;
    /// The spec.
    fn spec(&self) -> &Self::Spec;
    /// The spec, to change.
    fn spec_mut(&mut self) -> &mut Self::Spec;
}

/// Support for [`custom_resource!`](crate::custom_resource); not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use k8s_openapi;
    pub use serde;

    /// The `scope:` words of the macro.
    pub mod scope {
        pub type Namespaced = k8s_openapi::NamespaceResourceScope;
        pub type Cluster = k8s_openapi::ClusterResourceScope;
    }

    pub use super::{Scope, deserialize, serialize};
}

/// Whether a k8s-openapi scope type is a namespace's.
#[doc(hidden)]
pub trait Scope: k8s_openapi::ResourceScope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireRef<'a, S, St> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    spec: &'a S,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a St>,
}

/// Writes `obj` in the wire format: `apiVersion`, `kind`, `metadata`, `spec`, and `status`
/// when there is one.
pub fn serialize<K, Ser>(obj: &K, serializer: Ser) -> Result<Ser::Ok, Ser::Error>
where
    K: CustomResource,
    K::Spec: Serialize,
    K::Status: Serialize,
    Ser: Serializer,
{
    WireRef {
        api_version: K::API_VERSION,
        kind: K::KIND,
        metadata: obj.metadata(),
        spec: obj.spec(),
        status: obj.status(),
    }
    .serialize(serializer)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<Value>,
    #[serde(default)]
    status: Option<Value>,
}

/// Reads the wire format into the object's parts. `apiVersion` and `kind`, when present, must
/// be the type's; an absent spec is the spec type's default; an absent, null or empty
/// (`{}`) status is none (what the API server stores before a controller writes one).
pub fn deserialize<'de, K, S, St, D>(
    deserializer: D,
) -> Result<(ObjectMeta, S, Option<St>), D::Error>
where
    K: Resource,
    S: DeserializeOwned + Default,
    St: DeserializeOwned,
    D: Deserializer<'de>,
{
    let wire = Wire::deserialize(deserializer)?;
    if let Some(av) = &wire.api_version
        && av != K::API_VERSION
    {
        return Err(D::Error::custom(format!(
            "apiVersion {av} is not {}",
            K::API_VERSION
        )));
    }
    if let Some(kind) = &wire.kind
        && kind != K::KIND
    {
        return Err(D::Error::custom(format!("kind {kind} is not {}", K::KIND)));
    }
    let spec = match wire.spec {
        None | Some(Value::Null) => S::default(),
        Some(v) => serde_json::from_value(v)
            .map_err(|e| D::Error::custom(format!("{} spec: {e}", K::KIND)))?,
    };
    let status = match wire.status {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(v) => Some(
            serde_json::from_value(v)
                .map_err(|e| D::Error::custom(format!("{} status: {e}", K::KIND)))?,
        ),
    };
    Ok((wire.metadata, spec, status))
}

/// Declares the Rust type of a custom kind and implements [`CustomResource`],
/// `k8s_openapi::Resource` and `Metadata`, [`HasStatus`](crate::HasStatus) and serde for it
/// (see the [module](crate::custom) example). The struct gets `pub metadata: ObjectMeta`,
/// `pub spec: <spec>` and `pub status: Option<<status>>`, and derives `Clone`, `Debug`,
/// `Default` and `PartialEq`, so the spec and status types need those and serde's traits.
/// The kind is the struct's name; `scope` is `Namespaced` or `Cluster`.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// # pub struct ZoneSpec { pub cidr: String }
/// # #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// # pub struct ZoneStatus { pub used: u32 }
/// kedge_guest::custom_resource! {
///     pub struct Zone {
///         group: "net.example.com",
///         version: "v1alpha1",
///         plural: "zones",
///         scope: Cluster,
///         spec: ZoneSpec,
///         status: ZoneStatus,
///     }
/// }
/// use kedge_guest::CustomResource;
/// assert!(!Zone::NAMESPACED);
/// assert_eq!(<Zone as k8s_openapi::Resource>::URL_PATH_SEGMENT, "zones");
/// ```
#[macro_export]
macro_rules! custom_resource {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            group: $group:literal,
            version: $version:literal,
            plural: $plural:literal,
            scope: $scope:ident,
            spec: $spec:ty,
            status: $status:ty $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Debug, Default, PartialEq)]
        $vis struct $name {
            /// Standard object metadata.
            pub metadata: $crate::custom::__private::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            /// What the user asks for.
            pub spec: $spec,
            /// What the controller observed; `None` until it writes one.
            pub status: ::core::option::Option<$status>,
        }

        impl $crate::custom::__private::k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = ::core::concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = ::core::stringify!($name);
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $crate::custom::__private::scope::$scope;
        }

        impl $crate::custom::__private::k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = ::core::concat!(::core::stringify!($name), "List");
        }

        impl $crate::custom::__private::k8s_openapi::Metadata for $name {
            type Ty = $crate::custom::__private::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }

        impl $crate::HasStatus for $name {
            type Status = $status;
            fn status(&self) -> ::core::option::Option<&$status> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut ::core::option::Option<$status> {
                &mut self.status
            }
        }

        impl $crate::CustomResource for $name {
            type Spec = $spec;
            const PLURAL: &'static str = $plural;
            const NAMESPACED: bool =
                <$crate::custom::__private::scope::$scope as $crate::custom::__private::Scope>::NAMESPACED;
            fn new(name: &str, spec: $spec) -> Self {
                let mut obj = Self {
                    spec,
                    ..::core::default::Default::default()
                };
                obj.metadata.name = ::core::option::Option::Some(name.into());
                obj
            }
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn spec_mut(&mut self) -> &mut $spec {
                &mut self.spec
            }
        }

        impl $crate::custom::__private::serde::Serialize for $name {
            fn serialize<S>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error>
            where
                S: $crate::custom::__private::serde::Serializer,
            {
                $crate::custom::__private::serialize(self, serializer)
            }
        }

        impl<'de> $crate::custom::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D>(deserializer: D) -> ::core::result::Result<Self, D::Error>
            where
                D: $crate::custom::__private::serde::Deserializer<'de>,
            {
                let (metadata, spec, status) =
                    $crate::custom::__private::deserialize::<Self, $spec, $status, D>(deserializer)?;
                ::core::result::Result::Ok(Self {
                    metadata,
                    spec,
                    status,
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use crate::meta::new_controller_ref;
    use crate::{
        ApiError, Cluster, ClusterExt, CustomResource, FakeCluster, KindRef, ObjectKey, Verb,
    };

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    pub struct DbSpec {
        pub size: u32,
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct DbStatus {
        #[serde(default)]
        pub ready_replicas: u32,
    }

    crate::custom_resource! {
        /// A test kind.
        pub struct Database {
            group: "db.example.com",
            version: "v2",
            plural: "databases",
            scope: Namespaced,
            spec: DbSpec,
            status: DbStatus,
        }
    }

    #[test]
    fn names_and_scope_come_from_the_declaration() {
        use k8s_openapi::Resource;
        assert_eq!(Database::API_VERSION, "db.example.com/v2");
        assert_eq!(
            (Database::GROUP, Database::VERSION),
            ("db.example.com", "v2")
        );
        assert_eq!(Database::KIND, "Database");
        assert_eq!(Database::PLURAL, "databases");
        const { assert!(Database::NAMESPACED) };
        assert_eq!(
            ObjectKey::of::<Database>("ns", "a"),
            ObjectKey::new("db.example.com/v2", "Database", "ns", "a")
        );
        assert_eq!(KindRef::of::<Database>().kind, "Database");
    }

    #[test]
    fn wire_format_round_trips_and_checks_the_kind() {
        let mut db = Database::new("a", DbSpec { size: 3 });
        let v = serde_json::to_value(&db).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "db.example.com/v2", "kind": "Database",
                "metadata": {"name": "a"}, "spec": {"size": 3}})
        );
        db.status = Some(DbStatus { ready_replicas: 2 });
        let v = serde_json::to_value(&db).unwrap();
        assert_eq!(v["status"], json!({"readyReplicas": 2}));
        assert_eq!(serde_json::from_value::<Database>(v).unwrap(), db);
        // What the API server stores before any controller ran: no status or an empty one.
        for status in [json!({}), json!(null)] {
            let back: Database = serde_json::from_value(json!({"apiVersion": "db.example.com/v2",
                "kind": "Database", "metadata": {"name": "a"}, "spec": {"size": 1},
                "status": status}))
            .unwrap();
            assert_eq!(back.status, None);
        }
        let wrong = json!({"apiVersion": "db.example.com/v1", "kind": "Database", "metadata": {}});
        let err = serde_json::from_value::<Database>(wrong).unwrap_err();
        assert!(
            err.to_string().contains("apiVersion db.example.com/v1"),
            "{err}"
        );
        let wrong = json!({"apiVersion": "db.example.com/v2", "kind": "Table", "spec": {}});
        assert!(serde_json::from_value::<Database>(wrong).is_err());
        let bad_spec = json!({"spec": {"size": "three"}});
        let err = serde_json::from_value::<Database>(bad_spec).unwrap_err();
        assert!(err.to_string().contains("Database spec"), "{err}");
    }

    #[test]
    fn typed_calls_work_against_the_fake() {
        let fake = FakeCluster::new();
        let db = fake
            .create("ns", &Database::new("a", DbSpec { size: 1 }))
            .unwrap();
        assert_eq!(db.metadata.generation, Some(1));
        assert_eq!(db.status, None, "an empty status reads as none");

        // Spec changes move the generation; status goes through its own call.
        let mut changed = db.clone();
        changed.spec.size = 2;
        let changed = fake.update("ns", &changed).unwrap();
        assert_eq!(changed.metadata.generation, Some(2));
        let stale = fake.update("ns", &db).unwrap_err();
        assert!(matches!(stale, ApiError::Conflict(_)));
        let with_status = fake
            .update_status_if_changed("ns", &changed, DbStatus { ready_replicas: 2 })
            .unwrap();
        assert_eq!(with_status.status, Some(DbStatus { ready_replicas: 2 }));
        fake.update_status_if_changed("ns", &with_status, DbStatus { ready_replicas: 2 })
            .unwrap();
        assert_eq!(fake.count(Verb::UpdateStatus, "Database"), 1);

        let patched: Database = fake
            .patch_merge("ns", "a", &json!({"spec": {"size": 5}}))
            .unwrap();
        assert_eq!(patched.spec.size, 5);
        assert_eq!(patched.status, Some(DbStatus { ready_replicas: 2 }));

        // Dependents, label selectors and garbage collection as for built-in kinds.
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("a-config".into());
        cm.metadata.labels = Some([("db".to_string(), "a".to_string())].into());
        cm.metadata.owner_references = Some(vec![new_controller_ref(&patched)]);
        fake.create("ns", &cm).unwrap();
        let owner_ref = &fake.list::<ConfigMap>("ns", "db=a").unwrap()[0]
            .metadata
            .owner_references
            .clone()
            .unwrap()[0];
        assert_eq!(
            (owner_ref.api_version.as_str(), owner_ref.kind.as_str()),
            ("db.example.com/v2", "Database")
        );
        assert_eq!(
            fake.dependents(patched.metadata.uid.as_deref().unwrap())
                .unwrap()
                .len(),
            1
        );
        fake.create("other", &Database::new("b", DbSpec::default()))
            .unwrap();
        assert_eq!(fake.list::<Database>("", "").unwrap().len(), 2);
        assert_eq!(fake.list::<Database>("ns", "").unwrap().len(), 1);
        fake.delete::<Database>("ns", "a").unwrap();
        assert_eq!(fake.collect_garbage(), 1);
        assert!(fake.list::<ConfigMap>("ns", "").unwrap().is_empty());
    }
}
