//! The resource table: every kind the API serves, described once. Discovery, routing, storage
//! keys, OpenAPI and plugin permissions all read it, so adding a kind is one entry. Beside it,
//! [`RETIRED`]: versions Kubernetes has removed that are still served by conversion.

use serde_json::Value;

/// One REST resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources served (`status`, `scale`, `binding`, `log`).
    pub subresources: &'static [&'static str],
    /// Fields allowed in `fieldSelector` besides metadata.name / metadata.namespace.
    pub field_selectors: &'static [&'static str],
}

impl Resource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, sub: &str) -> bool {
        self.subresources.contains(&sub)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const NONE: &[&str] = &[];

pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        categories: NONE,
        subresources: &["status"],
        field_selectors: &["status.phase"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        categories: NONE,
        subresources: &["status"],
        field_selectors: &["spec.unschedulable"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        namespaced: true,
        short_names: &["po"],
        categories: &["all"],
        subresources: &[
            "status",
            "binding",
            "log",
            "exec",
            "attach",
            "portforward",
            "eviction",
        ],
        field_selectors: &[
            "spec.nodeName",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Event",
        plural: "events",
        singular: "event",
        namespaced: true,
        short_names: &["ev"],
        categories: NONE,
        subresources: NONE,
        field_selectors: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        namespaced: true,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: &["type"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        namespaced: true,
        short_names: &["cm"],
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        singular: "service",
        namespaced: true,
        short_names: &["svc"],
        categories: &["all"],
        subresources: &["status"],
        field_selectors: &["spec.clusterIP", "spec.type"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        namespaced: true,
        short_names: &["ep"],
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        namespaced: true,
        short_names: &["sa"],
        categories: NONE,
        // TokenRequest (`kubectl create token`).
        subresources: &["token"],
        field_selectors: NONE,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ResourceQuota",
        plural: "resourcequotas",
        singular: "resourcequota",
        namespaced: true,
        short_names: &["quota"],
        categories: NONE,
        // Kept by the API's quota admission, not a controller.
        subresources: &["status"],
        field_selectors: NONE,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "LimitRange",
        plural: "limitranges",
        singular: "limitrange",
        namespaced: true,
        short_names: &["limits"],
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "ControllerRevision",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        namespaced: true,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "DaemonSet",
        plural: "daemonsets",
        singular: "daemonset",
        namespaced: true,
        short_names: &["ds"],
        categories: &["all"],
        subresources: &["status"],
        field_selectors: NONE,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        namespaced: true,
        short_names: &["deploy"],
        categories: &["all"],
        subresources: &["status", "scale"],
        field_selectors: NONE,
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        namespaced: true,
        short_names: &["rs"],
        categories: &["all"],
        subresources: &["status", "scale"],
        field_selectors: NONE,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "ReplicationController",
        plural: "replicationcontrollers",
        singular: "replicationcontroller",
        namespaced: true,
        short_names: &["rc"],
        categories: &["all"],
        subresources: &["status", "scale"],
        field_selectors: &["status.replicas"],
    },
    Resource {
        group: "apps",
        version: "v1",
        kind: "StatefulSet",
        plural: "statefulsets",
        singular: "statefulset",
        namespaced: true,
        short_names: &["sts"],
        categories: &["all"],
        subresources: &["status", "scale"],
        field_selectors: NONE,
    },
    Resource {
        group: "batch",
        version: "v1",
        kind: "Job",
        plural: "jobs",
        singular: "job",
        namespaced: true,
        short_names: NONE,
        categories: &["all"],
        subresources: &["status"],
        field_selectors: &["status.successful"],
    },
    Resource {
        group: "batch",
        version: "v1",
        kind: "CronJob",
        plural: "cronjobs",
        singular: "cronjob",
        namespaced: true,
        short_names: &["cj"],
        categories: &["all"],
        subresources: &["status"],
        field_selectors: NONE,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        namespaced: true,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "discovery.k8s.io",
        version: "v1",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        namespaced: true,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: &["addressType"],
    },
    Resource {
        group: "",
        version: "v1",
        kind: "PersistentVolumeClaim",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        namespaced: true,
        short_names: &["pvc"],
        categories: NONE,
        subresources: &["status"],
        field_selectors: NONE,
    },
    Resource {
        group: "",
        version: "v1",
        kind: "PersistentVolume",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        namespaced: false,
        short_names: &["pv"],
        categories: NONE,
        subresources: &["status"],
        field_selectors: NONE,
    },
    Resource {
        group: "storage.k8s.io",
        version: "v1",
        kind: "StorageClass",
        plural: "storageclasses",
        singular: "storageclass",
        namespaced: false,
        short_names: &["sc"],
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "scheduling.k8s.io",
        version: "v1",
        kind: "PriorityClass",
        plural: "priorityclasses",
        singular: "priorityclass",
        namespaced: false,
        short_names: &["pc"],
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "node.k8s.io",
        version: "v1",
        kind: "RuntimeClass",
        plural: "runtimeclasses",
        singular: "runtimeclass",
        namespaced: false,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "policy",
        version: "v1",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        namespaced: true,
        short_names: &["pdb"],
        categories: NONE,
        subresources: &["status"],
        field_selectors: NONE,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRole",
        plural: "clusterroles",
        singular: "clusterrole",
        namespaced: false,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        namespaced: false,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "Role",
        plural: "roles",
        singular: "role",
        namespaced: true,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        kind: "RoleBinding",
        plural: "rolebindings",
        singular: "rolebinding",
        namespaced: true,
        short_names: NONE,
        categories: NONE,
        subresources: NONE,
        field_selectors: NONE,
    },
    Resource {
        group: "autoscaling",
        version: "v2",
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        namespaced: true,
        short_names: &["hpa"],
        categories: &["all"],
        subresources: &["status"],
        field_selectors: NONE,
    },
    // Users' own kinds; each definition adds its kind to the table while it is established
    // (see `register_custom`).
    Resource {
        group: "apiextensions.k8s.io",
        version: "v1",
        kind: "CustomResourceDefinition",
        plural: "customresourcedefinitions",
        singular: "customresourcedefinition",
        namespaced: false,
        short_names: &["crd", "crds"],
        categories: &["api-extensions"],
        subresources: &["status"],
        field_selectors: NONE,
    },
    // kedge's own: the controllers and the scheduler, as hot-swappable Wasm plugins.
    Resource {
        group: "plugins.kedge.io",
        version: "v1",
        kind: "Plugin",
        plural: "plugins",
        singular: "plugin",
        namespaced: false,
        short_names: &["plg"],
        categories: &["kedge"],
        subresources: &["status"],
        field_selectors: NONE,
    },
];

/// A version Kubernetes has removed that manifests copied from older docs and tutorials still
/// name. It is served by converting to and from the stored version of the same kind (one
/// storage version: objects written through either are visible through both), and every
/// response to it carries kube-apiserver's deprecation warning. Adding one is one entry in
/// [`RETIRED`].
#[derive(Debug)]
pub struct Retired {
    /// The resource as the retired version presents it (routing, discovery, OpenAPI). It has
    /// no categories, so `kubectl get all` lists the kind once, in its stored version.
    pub resource: Resource,
    /// The version that replaced it, in which its objects are stored (same group and kind).
    pub replacement: &'static str,
    /// What responses in this version warn of.
    pub deprecation: Deprecation,
    /// Reshapes an object of the retired version into the replacement's; an error names what
    /// the replacement cannot hold. Must accept partial objects (apply configurations).
    /// `apiVersion` is rewritten by [`Retired::to_stored`], not here.
    pub up: Convert,
    /// The reverse; an error names what the retired version cannot hold, and the request is
    /// refused rather than the field dropped.
    pub down: Convert,
}

/// The warning a served version other than the stored one carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deprecation {
    /// A Kubernetes version deprecated in one release and removed in another (`1.21`, `1.25`).
    Removed {
        deprecated_in: &'static str,
        removed_in: &'static str,
    },
    /// A custom resource version its definition marks `deprecated`, with the definition's
    /// `deprecationWarning` if it has one.
    Deprecated(Option<&'static str>),
    /// A custom resource version served beside its storage version, current: no warning.
    Current,
}

/// One direction of a conversion, on an object in place.
pub type Convert = fn(&mut Value) -> Result<(), String>;

/// Why an object cannot cross between a retired version and its replacement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The body names another version than the URL (kube-apiserver's wording).
    #[error(
        "the API version in the data ({found}) does not match the expected API version ({expected})"
    )]
    ApiVersion { found: String, expected: String },
    /// The object has what the target version cannot represent.
    #[error("{0}")]
    Unrepresentable(String),
}

impl Retired {
    /// `batch/v1beta1`.
    pub fn api_version(&self) -> String {
        self.resource.api_version()
    }

    /// The stored resource this version is converted to.
    pub fn stored(&self) -> &'static Resource {
        by_plural(self.resource.group, self.replacement, self.resource.plural)
            .expect("a retired version's replacement is in RESOURCES")
    }

    /// kube-apiserver's deprecation warning, word for word (k8s.io/apiserver's
    /// `deprecation.WarningMessage`): `batch/v1beta1 CronJob is deprecated in v1.21+,
    /// unavailable in v1.25+; use batch/v1 CronJob`; for a deprecated custom resource version,
    /// its `deprecationWarning` or apiextensions' default `example.com/v1beta1 Widget is
    /// deprecated`. `None` for a current version.
    pub fn warning(&self) -> Option<String> {
        match self.deprecation {
            Deprecation::Removed {
                deprecated_in,
                removed_in,
            } => Some(format!(
                "{} {} is deprecated in v{deprecated_in}+, unavailable in v{removed_in}+; use {} {}",
                self.api_version(),
                self.resource.kind,
                self.stored().api_version(),
                self.resource.kind
            )),
            Deprecation::Deprecated(Some(text)) => Some(text.to_string()),
            Deprecation::Deprecated(None) => Some(format!(
                "{} {} is deprecated",
                self.api_version(),
                self.resource.kind
            )),
            Deprecation::Current => None,
        }
    }

    /// An object (or apply configuration) sent in the retired version, in the stored
    /// version's form. A body without `apiVersion` is taken to be in the URL's version.
    pub fn to_stored(&self, obj: &mut Value) -> Result<(), ConvertError> {
        let expected = self.api_version();
        if let Some(found) = obj.get("apiVersion").and_then(Value::as_str)
            && found != expected
        {
            return Err(ConvertError::ApiVersion {
                found: found.to_string(),
                expected,
            });
        }
        (self.up)(obj).map_err(ConvertError::Unrepresentable)?;
        if let Some(o) = obj.as_object_mut() {
            o.insert(
                "apiVersion".into(),
                Value::from(self.stored().api_version()),
            );
        }
        Ok(())
    }

    /// A stored object as the retired version presents it.
    pub fn from_stored(&self, obj: &mut Value) -> Result<(), ConvertError> {
        (self.down)(obj).map_err(ConvertError::Unrepresentable)?;
        if let Some(o) = obj.as_object_mut() {
            o.insert("apiVersion".into(), Value::from(self.api_version()));
        }
        Ok(())
    }
}

/// The retired versions served. Each converts to a kind in [`RESOURCES`].
pub static RETIRED: &[Retired] = &[
    // The CronJob of the Kubernetes 1.20 docs and of countless charts and tutorials.
    Retired {
        resource: Resource {
            group: "batch",
            version: "v1beta1",
            kind: "CronJob",
            plural: "cronjobs",
            singular: "cronjob",
            namespaced: true,
            short_names: &["cj"],
            categories: NONE,
            subresources: &["status"],
            field_selectors: NONE,
        },
        replacement: "v1",
        deprecation: Deprecation::Removed {
            deprecated_in: "1.21",
            removed_in: "1.25",
        },
        up: cronjob_same_shape,
        down: cronjob_same_shape,
    },
    // Not retired: Kubernetes still serves autoscaling/v1 (what `kubectl autoscale` sends),
    // so no warning; converted as kube-apiserver converts it (`crate::autoscaling`).
    Retired {
        resource: Resource {
            group: "autoscaling",
            version: "v1",
            kind: "HorizontalPodAutoscaler",
            plural: "horizontalpodautoscalers",
            singular: "horizontalpodautoscaler",
            namespaced: true,
            short_names: &["hpa"],
            categories: NONE,
            subresources: &["status"],
            field_selectors: NONE,
        },
        replacement: "v2",
        deprecation: Deprecation::Current,
        up: crate::autoscaling::v1_to_v2,
        down: crate::autoscaling::v2_to_v1,
    },
];

/// batch/v1beta1 CronJob, as Kubernetes 1.24 last served it, has exactly batch/v1's fields
/// (`timeZone` included, alpha in both then) and its job template holds a batch/v1 JobSpec;
/// kube-apiserver's conversion between them copies every field. Only `apiVersion` differs.
fn cronjob_same_shape(_: &mut Value) -> Result<(), String> {
    Ok(())
}

/// A retired version, or a custom resource's served version other than its storage one, by
/// group, version and plural (the URL form).
pub fn retired(group: &str, version: &str, plural: &str) -> Option<&'static Retired> {
    let same = |r: &&Retired| {
        r.resource.group == group && r.resource.version == version && r.resource.plural == plural
    };
    RETIRED
        .iter()
        .find(same)
        .or_else(|| custom().views.iter().copied().find(same))
}

/// By group and plural (the URL form).
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    let same = |r: &&Resource| r.group == group && r.version == version && r.plural == plural;
    RESOURCES
        .iter()
        .find(same)
        .or_else(|| custom().kinds.iter().copied().find(same))
}

/// By `apiVersion` and `kind` (the manifest form).
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    let (group, version) = split_api_version(api_version);
    let same = |r: &&Resource| r.group == group && r.version == version && r.kind == kind;
    RESOURCES
        .iter()
        .find(same)
        .or_else(|| custom().kinds.iter().copied().find(same))
}

/// The stored resource of a group and plural, whatever its version (storage keys and owner
/// indexes name no version).
pub fn by_group_plural(group: &str, plural: &str) -> Option<&'static Resource> {
    let same = |r: &&Resource| r.group == group && r.plural == plural;
    RESOURCES
        .iter()
        .find(same)
        .or_else(|| custom().kinds.iter().copied().find(same))
}

pub fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Every served kind in its stored version: the built-in ones, then the custom ones in the
/// order their definitions were registered.
pub fn all() -> Vec<&'static Resource> {
    RESOURCES
        .iter()
        .chain(custom().kinds.iter().copied())
        .collect()
}

/// Every served version stored as another: [`RETIRED`], then the custom resources' others.
pub fn all_retired() -> Vec<&'static Retired> {
    RETIRED
        .iter()
        .chain(custom().views.iter().copied())
        .collect()
}

/// The served groups in discovery order, each with its versions.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in all() {
        if !r.group.is_empty() && !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The kinds users define (CustomResourceDefinitions), registered while their definitions are
/// established. The table is the process's, like [`RESOURCES`]: one process serves one
/// cluster. Rows are leaked (`&'static`, as the built-in ones, so every lookup stays a
/// borrowed reference); definitions change rarely, and a re-registration that keeps a row's
/// content keeps its address, so holders of the old reference (informers, plugin
/// permissions) still compare equal.
struct Custom {
    kinds: Vec<&'static Resource>,
    views: Vec<&'static Retired>,
    generation: u64,
}

static CUSTOM: std::sync::RwLock<Custom> = std::sync::RwLock::new(Custom {
    kinds: Vec::new(),
    views: Vec::new(),
    generation: 0,
});

fn custom() -> std::sync::RwLockReadGuard<'static, Custom> {
    CUSTOM.read().unwrap_or_else(|p| p.into_inner())
}

/// A custom kind to serve: its stored version and the other served versions.
#[derive(Debug)]
pub struct CustomKind {
    pub stored: Resource,
    pub views: Vec<Retired>,
}

/// A string for a leaked row. Definitions change rarely; see [`register_custom`].
pub fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A list for a leaked row.
pub fn leak_list(items: &[String]) -> &'static [&'static str] {
    Box::leak(
        items
            .iter()
            .map(|s| leak(s))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    )
}

/// Serves a custom kind (replacing what was served for its group and plural) and returns its
/// stored row. A row equal to the one served before is kept, address included.
pub fn register_custom(kind: CustomKind) -> &'static Resource {
    let mut c = CUSTOM.write().unwrap_or_else(|p| p.into_inner());
    let (group, plural) = (kind.stored.group, kind.stored.plural);
    let kept = c
        .kinds
        .iter()
        .copied()
        .find(|r| r.group == group && r.plural == plural && **r == kind.stored);
    let stored: &'static Resource = kept.unwrap_or_else(|| Box::leak(Box::new(kind.stored)));
    c.kinds
        .retain(|r| !(r.group == group && r.plural == plural));
    c.kinds.push(stored);
    c.views
        .retain(|r| !(r.resource.group == group && r.resource.plural == plural));
    for v in kind.views {
        c.views.push(Box::leak(Box::new(v)));
    }
    c.generation += 1;
    stored
}

/// Stops serving a custom kind. Its rows stay allocated (references to them stay valid).
pub fn unregister_custom(group: &str, plural: &str) {
    let mut c = CUSTOM.write().unwrap_or_else(|p| p.into_inner());
    let before = c.kinds.len() + c.views.len();
    c.kinds
        .retain(|r| !(r.group == group && r.plural == plural));
    c.views
        .retain(|r| !(r.resource.group == group && r.resource.plural == plural));
    if c.kinds.len() + c.views.len() != before {
        c.generation += 1;
    }
}

/// Whether a row is a custom kind's (not one of the built-in tables').
pub fn is_custom(res: &Resource) -> bool {
    !RESOURCES.iter().any(|r| std::ptr::eq(r, res))
        && !RETIRED.iter().any(|r| std::ptr::eq(&r.resource, res))
}

/// Changes whenever the custom kinds served change: discovery and OpenAPI documents built
/// from the table are current while it stays the same.
pub fn generation() -> u64 {
    custom().generation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree() {
        for r in RESOURCES {
            assert_eq!(
                by_plural(r.group, r.version, r.plural).unwrap().kind,
                r.kind
            );
            assert_eq!(by_kind(&r.api_version(), r.kind).unwrap().plural, r.plural);
        }
        assert!(by_kind("v1", "Deployment").is_none());
        assert_eq!(groups()[0], ("apps", "v1"));
        assert_eq!(groups()[1], ("batch", "v1"));
        let all: Vec<&str> = RESOURCES
            .iter()
            .filter(|r| r.categories.contains(&"all"))
            .map(|r| r.plural)
            .collect();
        for p in [
            "pods",
            "services",
            "deployments",
            "replicasets",
            "statefulsets",
            "daemonsets",
            "jobs",
            "cronjobs",
            "replicationcontrollers",
            "horizontalpodautoscalers",
        ] {
            assert!(all.contains(&p), "{p} is in category all");
        }
        assert_eq!(all.len(), 10);
    }

    /// A retired version mirrors the stored resource it converts to, except for its version
    /// and its categories (none: `kubectl get all` would list the kind twice).
    #[test]
    fn retired_versions_mirror_their_replacement() {
        for r in RETIRED {
            let stored = r.stored();
            let v = &r.resource;
            assert_ne!(v.version, stored.version);
            assert_eq!(
                (v.group, v.kind, v.plural, v.singular, v.namespaced),
                (
                    stored.group,
                    stored.kind,
                    stored.plural,
                    stored.singular,
                    stored.namespaced
                )
            );
            assert_eq!(v.short_names, stored.short_names);
            assert!(v.subresources.iter().all(|s| stored.has(s)));
            assert!(v.categories.is_empty());
            assert!(by_plural(v.group, v.version, v.plural).is_none());
            assert!(std::ptr::eq(
                retired(v.group, v.version, v.plural).unwrap(),
                r
            ));
        }
    }

    /// The warning kubectl prints, as kube-apiserver words it.
    #[test]
    fn cronjob_v1beta1_warning_is_kubernetes_wording() {
        let r = retired("batch", "v1beta1", "cronjobs").unwrap();
        assert_eq!(
            r.warning().unwrap(),
            "batch/v1beta1 CronJob is deprecated in v1.21+, unavailable in v1.25+; use batch/v1 CronJob"
        );
    }

    fn widget(version: &'static str, short: &'static [&'static str]) -> Resource {
        Resource {
            group: "registry.test.kedge.dev",
            version,
            kind: "Widget",
            plural: "widgets",
            singular: "widget",
            namespaced: true,
            short_names: short,
            categories: NONE,
            subresources: &["status"],
            field_selectors: NONE,
        }
    }

    fn noop(_: &mut Value) -> Result<(), String> {
        Ok(())
    }

    /// Custom kinds are found by every lookup while registered, keep their address across an
    /// identical re-registration, and are gone after unregistering.
    #[test]
    fn custom_kinds_come_and_go() {
        let g = "registry.test.kedge.dev";
        let gen0 = generation();
        let stored = register_custom(CustomKind {
            stored: widget("v1", &["wd"]),
            views: vec![Retired {
                resource: widget("v1beta1", &["wd"]),
                replacement: "v1",
                deprecation: Deprecation::Deprecated(None),
                up: noop,
                down: noop,
            }],
        });
        assert!(generation() > gen0);
        assert!(is_custom(stored));
        assert!(!is_custom(by_kind("v1", "Pod").unwrap()));
        assert!(std::ptr::eq(
            by_kind(&format!("{g}/v1"), "Widget").unwrap(),
            stored
        ));
        assert!(std::ptr::eq(by_plural(g, "v1", "widgets").unwrap(), stored));
        assert!(std::ptr::eq(by_group_plural(g, "widgets").unwrap(), stored));
        assert!(all().iter().any(|r| std::ptr::eq(*r, stored)));
        assert!(groups().contains(&(g, "v1")));
        let view = retired(g, "v1beta1", "widgets").unwrap();
        assert!(std::ptr::eq(view.stored(), stored));
        assert_eq!(
            view.warning().unwrap(),
            "registry.test.kedge.dev/v1beta1 Widget is deprecated"
        );
        assert!(all_retired().iter().any(|r| std::ptr::eq(*r, view)));

        let again = register_custom(CustomKind {
            stored: widget("v1", &["wd"]),
            views: vec![],
        });
        assert!(
            std::ptr::eq(again, stored),
            "an unchanged row keeps its address"
        );
        assert!(retired(g, "v1beta1", "widgets").is_none());
        let changed = register_custom(CustomKind {
            stored: widget("v1", &["wd", "wdg"]),
            views: vec![],
        });
        assert!(!std::ptr::eq(changed, stored));
        assert_eq!(by_plural(g, "v1", "widgets").unwrap().short_names.len(), 2);

        unregister_custom(g, "widgets");
        assert!(by_plural(g, "v1", "widgets").is_none());
        assert!(!groups().contains(&(g, "v1")));
    }

    #[test]
    fn cronjob_v1beta1_converts_both_ways_keeping_every_field() {
        let r = retired("batch", "v1beta1", "cronjobs").unwrap();
        let spec = serde_json::json!({"schedule": "*/1 * * * *", "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid", "startingDeadlineSeconds": 30,
            "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "hello", "image": "busybox", "args": ["date"]}]}}}}});
        let mut obj = serde_json::json!({"apiVersion": "batch/v1beta1", "kind": "CronJob",
            "metadata": {"name": "hello"}, "spec": spec.clone()});
        r.to_stored(&mut obj).unwrap();
        assert_eq!(obj["apiVersion"], "batch/v1");
        assert_eq!(obj["spec"], spec);
        obj["status"] = serde_json::json!({"lastScheduleTime": "2025-01-01T00:00:00Z"});
        r.from_stored(&mut obj).unwrap();
        assert_eq!(obj["apiVersion"], "batch/v1beta1");
        assert_eq!(obj["spec"], spec);
        assert_eq!(obj["status"]["lastScheduleTime"], "2025-01-01T00:00:00Z");
        // No apiVersion: the URL's version. Another version: refused, as kube-apiserver does.
        let mut bare = serde_json::json!({"kind": "CronJob"});
        r.to_stored(&mut bare).unwrap();
        assert_eq!(bare["apiVersion"], "batch/v1");
        let mut other = serde_json::json!({"apiVersion": "batch/v1", "kind": "CronJob"});
        assert_eq!(
            r.to_stored(&mut other).unwrap_err().to_string(),
            "the API version in the data (batch/v1) does not match the expected API version (batch/v1beta1)"
        );
    }
}
