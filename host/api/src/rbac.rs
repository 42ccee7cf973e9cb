//! Role-based access control (`rbac.authorization.k8s.io/v1`), as kube-apiserver's RBAC
//! authorizer decides: a request is allowed when a RoleBinding in its namespace or a
//! ClusterRoleBinding names the caller (User, Group or ServiceAccount) and the bound Role or
//! ClusterRole has a rule matching the request's verb, API group, resource (with
//! subresource), name — or, for requests outside the resource URLs, its path.
//!
//! It applies to every caller that is neither in `system:masters` (the admin certificate,
//! which kube-apiserver lets through before RBAC too) nor a node (nodes keep the Node
//! authorizer in [`super::authz`]). Deny is the default; there are no deny rules.
//!
//! This runs on every request, so the policy is compiled once into a [`Policy`] snapshot and
//! only rebuilt after an RBAC object changed ([`Authorizer::invalidate`], called by the HTTP
//! layer after its own writes and by [`run`] for changes from elsewhere).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::ops::{Api, WriteOptions};
use crate::auth::Identity;
use kedge_core::meta;
use kedge_core::resources::{self, Resource};
use kedge_store::informer::Informers;

pub(crate) const GROUP: &str = "rbac.authorization.k8s.io";
/// Callers in this group are not subject to authorization at all, as in Kubernetes.
pub(crate) const MASTERS_GROUP: &str = "system:masters";

/// What a request asks to do, in the authorizer's terms (kube's `authorizer.Attributes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, ... for resources; the lowercase HTTP method for
    /// other paths.
    pub verb: String,
    /// False for non-resource paths (`/version`, `/api`, `/healthz`).
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
}

impl Attributes {
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    pub(crate) fn non_resource(verb: &str, path: &str) -> Self {
        Attributes {
            verb: verb.into(),
            path: path.into(),
            ..Default::default()
        }
    }
}

/// Whether RBAC decides for this caller (everyone but masters and nodes).
pub fn applies(id: &Identity) -> bool {
    !id.groups.iter().any(|g| g == MASTERS_GROUP) && super::authz::node_of(id).is_none()
}

/// One `PolicyRule`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// kube's `RuleAllows`.
    pub fn allows(&self, a: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        if !any(&self.verbs, &a.verb) {
            return false;
        }
        if !a.resource_request {
            return self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == a.path
                    || u.strip_suffix('*')
                        .is_some_and(|prefix| a.path.starts_with(prefix))
            });
        }
        if !any(&self.api_groups, &a.group) {
            return false;
        }
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || *r == combined
                || (!a.subresource.is_empty()
                    && r.strip_prefix("*/") == Some(a.subresource.as_str()))
        });
        if !resource_ok {
            return false;
        }
        // No names listed: every name (and nameless requests such as list and create).
        self.resource_names.is_empty() || self.resource_names.contains(&a.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

impl Subject {
    fn matches(&self, id: &Identity) -> bool {
        match self {
            Subject::User(u) => *u == id.user,
            Subject::Group(g) => id.groups.iter().any(|x| x == g),
            Subject::ServiceAccount { namespace, name } => id
                .user
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(ns, n)| ns == namespace && n == name),
        }
    }
}

#[derive(Clone, Debug)]
struct Binding {
    /// The RoleBinding's namespace; `None` for a ClusterRoleBinding.
    namespace: Option<String>,
    subjects: Vec<Subject>,
    /// `roleRef.kind == "ClusterRole"`.
    cluster_role: bool,
    role: String,
}

impl Binding {
    fn from_json(v: &Value, namespaced: bool) -> Binding {
        let namespace = namespaced.then(|| meta::namespace(v).to_string());
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = s.get("name")?.as_str()?.to_string();
                Some(match s.get("kind")?.as_str()? {
                    "User" => Subject::User(name),
                    "Group" => Subject::Group(name),
                    "ServiceAccount" => Subject::ServiceAccount {
                        // A RoleBinding's subject without a namespace means its own.
                        namespace: s
                            .get("namespace")
                            .and_then(Value::as_str)
                            .filter(|n| !n.is_empty())
                            .map(str::to_string)
                            .or_else(|| namespace.clone())?,
                        name,
                    },
                    _ => return None,
                })
            })
            .collect();
        Binding {
            subjects,
            cluster_role: v.pointer("/roleRef/kind").and_then(Value::as_str) == Some("ClusterRole"),
            role: v
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            namespace,
        }
    }
}

/// A compiled snapshot of every Role, ClusterRole and binding.
#[derive(Debug, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    bindings: Vec<Binding>,
}

fn rules_of(v: &Value) -> Vec<Rule> {
    v.get("rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(Rule::from_json)
        .collect()
}

impl Policy {
    pub(crate) fn from_objects(
        cluster_roles: &[Value],
        roles: &[Value],
        cluster_bindings: &[Value],
        bindings: &[Value],
    ) -> Policy {
        Policy {
            cluster_roles: cluster_roles
                .iter()
                .map(|r| (meta::name(r).to_string(), rules_of(r)))
                .collect(),
            roles: roles
                .iter()
                .map(|r| {
                    let key = (meta::namespace(r).to_string(), meta::name(r).to_string());
                    (key, rules_of(r))
                })
                .collect(),
            bindings: cluster_bindings
                .iter()
                .map(|b| Binding::from_json(b, false))
                .chain(bindings.iter().map(|b| Binding::from_json(b, true)))
                .collect(),
        }
    }

    /// Reads the policy from the store.
    pub fn load(api: &Api) -> Policy {
        let list = |kind: &str| -> Vec<Value> {
            let res = resources::by_kind("rbac.authorization.k8s.io/v1", kind).expect("served");
            api.list(res, "", &Default::default())
                .ok()
                .and_then(|l| l.get("items").and_then(Value::as_array).cloned())
                .unwrap_or_default()
        };
        Policy::from_objects(
            &list("ClusterRole"),
            &list("Role"),
            &list("ClusterRoleBinding"),
            &list("RoleBinding"),
        )
    }

    /// Whether some binding of `id` grants `a`. RoleBindings only count inside their
    /// namespace (and never for paths); a RoleBinding to a ClusterRole grants that role's
    /// rules in the binding's namespace only.
    pub fn allows(&self, id: &Identity, a: &Attributes) -> bool {
        self.bindings.iter().any(|b| {
            if let Some(ns) = &b.namespace
                && (!a.resource_request || a.namespace != *ns)
            {
                return false;
            }
            if !b.subjects.iter().any(|s| s.matches(id)) {
                return false;
            }
            let rules = match (&b.namespace, b.cluster_role) {
                (_, true) => self.cluster_roles.get(&b.role),
                (Some(ns), false) => self.roles.get(&(ns.clone(), b.role.clone())),
                (None, false) => None,
            };
            rules.is_some_and(|rules| rules.iter().any(|r| r.allows(a)))
        })
    }
}

impl Policy {
    /// Every rule that applies to `id` in `namespace` (SelfSubjectRulesReview, `kubectl auth
    /// can-i --list`): ClusterRoleBindings' everywhere, RoleBindings' in their namespace, and
    /// path rules only from ClusterRoleBindings.
    pub(crate) fn rules_for(&self, id: &Identity, namespace: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        for b in &self.bindings {
            if b.namespace.as_ref().is_some_and(|ns| ns != namespace)
                || !b.subjects.iter().any(|s| s.matches(id))
            {
                continue;
            }
            let rules = match (&b.namespace, b.cluster_role) {
                (_, true) => self.cluster_roles.get(&b.role),
                (Some(ns), false) => self.roles.get(&(ns.clone(), b.role.clone())),
                (None, false) => None,
            };
            for r in rules.into_iter().flatten() {
                if b.namespace.is_some() && !r.non_resource_urls.is_empty() {
                    continue;
                }
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }
}

/// The RBAC authorizer: a cached [`Policy`], rebuilt lazily after invalidation.
pub struct Authorizer {
    api: Arc<Api>,
    dirty: AtomicBool,
    policy: RwLock<Arc<Policy>>,
}

impl Authorizer {
    pub fn new(api: Arc<Api>) -> Self {
        Authorizer {
            api,
            dirty: AtomicBool::new(true),
            policy: RwLock::new(Arc::new(Policy::default())),
        }
    }

    /// Marks the snapshot stale: the next decision reloads it from the store.
    pub fn invalidate(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    fn policy(&self) -> Arc<Policy> {
        // Cleared before reading, so a write racing with the reload marks it dirty again.
        // The reload runs under the snapshot's write lock: two racing reloads must not let
        // the older one land last.
        if self.dirty.swap(false, Ordering::AcqRel) {
            let mut slot = self.policy.write().unwrap_or_else(|p| p.into_inner());
            let fresh = Arc::new(Policy::load(&self.api));
            *slot = fresh.clone();
            return fresh;
        }
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Masters are always allowed; everyone else by their bindings.
    pub fn allows(&self, id: &Identity, a: &Attributes) -> bool {
        !applies(id) || self.policy().allows(id, a)
    }

    /// The rules that apply to `id` in `namespace`.
    pub(crate) fn rules_for(&self, id: &Identity, namespace: &str) -> Vec<Rule> {
        self.policy().rules_for(id, namespace)
    }

    /// `Ok` or the 403 kube-apiserver would send.
    pub fn check(&self, id: &Identity, a: &Attributes) -> Result<(), ApiError> {
        if self.allows(id, a) {
            Ok(())
        } else {
            Err(forbidden(id, a, ""))
        }
    }

    /// RBAC's escalation check for writes of Roles and bindings: a caller may only grant
    /// what it holds itself — every (verb, group, resource, name) of a new role's rules, or
    /// of the role a new binding refers to — unless it may `escalate` the roles or `bind`
    /// the referenced role. Wildcards are checked literally, so only a wildcard grants one.
    pub(crate) fn check_escalation(
        &self,
        id: &Identity,
        res: &Resource,
        namespace: &str,
        obj: &Value,
    ) -> Result<(), ApiError> {
        if !applies(id) || res.group != GROUP {
            return Ok(());
        }
        let policy = self.policy();
        let name = meta::name(obj);
        let (rules, special) = match res.kind {
            "Role" | "ClusterRole" => (
                rules_of(obj),
                Attributes::resource("escalate", GROUP, res.plural, "", namespace, name),
            ),
            _ => {
                let kind = obj
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role = obj
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let (plural, ns) = if kind == "ClusterRole" {
                    ("clusterroles", "")
                } else {
                    ("roles", namespace)
                };
                let rules = if kind == "ClusterRole" {
                    policy.cluster_roles.get(role)
                } else {
                    policy.roles.get(&(namespace.to_string(), role.to_string()))
                };
                let mut bind = Attributes::resource("bind", GROUP, plural, "", ns, role);
                // A RoleBinding's `bind` may come from a role in its namespace.
                if !namespace.is_empty() {
                    bind.namespace = namespace.to_string();
                }
                (rules.cloned().unwrap_or_default(), bind)
            }
        };
        if policy.allows(id, &special) {
            return Ok(());
        }
        let mut missing = Vec::new();
        for rule in &rules {
            for want in expand(rule, namespace) {
                if !policy.allows(id, &want) {
                    missing.push(want);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing
            .iter()
            .take(10)
            .map(|a| {
                if a.resource_request {
                    format!(
                        "{{APIGroups:[{:?}], Resources:[{:?}], Verbs:[{:?}]{}}}",
                        a.group,
                        if a.subresource.is_empty() {
                            a.resource.clone()
                        } else {
                            format!("{}/{}", a.resource, a.subresource)
                        },
                        a.verb,
                        if a.name.is_empty() {
                            String::new()
                        } else {
                            format!(", ResourceNames:[{:?}]", a.name)
                        }
                    )
                } else {
                    format!("{{NonResourceURLs:[{:?}], Verbs:[{:?}]}}", a.path, a.verb)
                }
            })
            .collect();
        Err(ApiError {
            details: Some(json!({"name": name, "group": GROUP, "kind": res.plural})),
            ..ApiError::forbidden(format!(
                "{}.{GROUP} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
                res.plural,
                id.user,
                id.groups,
                shown.join("\n")
            ))
        })
    }
}

/// Every single permission a rule grants, wildcards kept literal.
fn expand(rule: &Rule, namespace: &str) -> Vec<Attributes> {
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for path in &rule.non_resource_urls {
            out.push(Attributes::non_resource(verb, path));
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let (r, sub) = resource.split_once('/').unwrap_or((resource, ""));
                let names: Vec<&str> = if rule.resource_names.is_empty() {
                    vec![""]
                } else {
                    rule.resource_names.iter().map(String::as_str).collect()
                };
                for name in names {
                    out.push(Attributes::resource(verb, group, r, sub, namespace, name));
                }
            }
        }
    }
    out
}

/// The 403 for a refused request, worded as kube-apiserver's: `pods is forbidden: User "u"
/// cannot list resource "pods" in API group "" in the namespace "default"`, then `: reason`
/// if any. RBAC and the Node authorizer ([`super::authz`]) both refuse with it.
pub fn forbidden(id: &Identity, a: &Attributes, reason: &str) -> ApiError {
    let why = if a.resource_request {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            " at the cluster scope".to_string()
        } else {
            format!(" in the namespace {:?}", a.namespace)
        };
        format!(
            "User {:?} cannot {} resource {resource:?} in API group {:?}{scope}",
            id.user, a.verb, a.group
        )
    } else {
        format!("User {:?} cannot {} path {:?}", id.user, a.verb, a.path)
    };
    let why = if reason.is_empty() {
        why
    } else {
        format!("{why}: {reason}")
    };
    if !a.resource_request {
        return ApiError::forbidden(format!("forbidden: {why}"));
    }
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let object = if a.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", a.name)
    };
    ApiError {
        details: Some(json!({"name": a.name, "group": a.group, "kind": a.resource})),
        ..ApiError::forbidden(format!("{object} is forbidden: {why}"))
    }
}

/// The default ClusterRoles and ClusterRoleBindings (kube-apiserver's bootstrap policy,
/// trimmed to what kedge serves): discovery and self-review for everyone authenticated,
/// `cluster-admin` for `system:masters`, and the user-facing `admin`, `edit` and `view`.
pub(crate) fn bootstrap_policy() -> (Vec<Value>, Vec<Value>) {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| json!({"apiGroups": groups, "resources": resources, "verbs": verbs});
    let read = ["get", "list", "watch"];
    let write = ["create", "delete", "deletecollection", "patch", "update"];
    let view_rules = vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "events",
                "limitranges",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                // Read-only for admin and edit too, as in Kubernetes: quotas are the
                // cluster administrator's.
                "resourcequotas",
                "resourcequotas/status",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            &read,
        ),
        rule(&[""], &["namespaces", "namespaces/status"], &read),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            &read,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            &read,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], &read),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            &read,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            &read,
        ),
        // metrics-server's `system:aggregated-metrics-reader`, aggregated to view, edit and
        // admin (`kubectl top`).
        rule(&["metrics.k8s.io"], &["nodes", "pods"], &read),
    ];
    let mut edit_rules = view_rules.clone();
    edit_rules.extend([
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
            &write,
        ),
        rule(
            &[""],
            &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy"],
            &read,
        ),
        rule(&[""], &["services/proxy"], &read),
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            &write,
        ),
        rule(&[""], &["secrets"], &read),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        // What `kubectl drain` needs besides cordoning the node.
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            &write,
        ),
        rule(&["batch"], &["cronjobs", "jobs"], &write),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], &write),
        rule(&["discovery.k8s.io"], &["endpointslices"], &write),
        rule(&["policy"], &["poddisruptionbudgets"], &write),
    ]);
    let mut admin_rules = edit_rules.clone();
    admin_rules.push(rule(
        &[GROUP],
        &["rolebindings", "roles"],
        super::discovery::VERBS,
    ));
    let cluster_role = |name: &str, rules: Vec<Value>| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name,
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": rules})
    };
    let roles = vec![
        cluster_role(
            "cluster-admin",
            vec![
                rule(&["*"], &["*"], &["*"]),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        cluster_role("admin", admin_rules),
        cluster_role("edit", edit_rules),
        cluster_role("view", view_rules),
        cluster_role(
            "system:discovery",
            vec![
                json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*",
                "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version",
                "/version/"], "verbs": ["get"]}),
            ],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        // kube-apiserver's `system:node` role, for reference and for binding by hand: kedge
        // decides for nodes with its Node authorizer (super::authz), which narrows the pod,
        // secret and volume rules to the node's own; what nodes read cluster-wide (the
        // service proxy and DNS) is the same here.
        cluster_role(
            "system:node",
            vec![
                rule(
                    &[""],
                    &["services", "endpoints", "nodes", "namespaces"],
                    &read,
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], &read),
                rule(&["node.k8s.io"], &["runtimeclasses"], &read),
                rule(
                    &[""],
                    &["nodes", "nodes/status"],
                    &["create", "update", "patch"],
                ),
                rule(
                    &[""],
                    &["pods", "configmaps", "secrets"],
                    &["get", "list", "watch"],
                ),
                rule(&[""], &["pods/status"], &["update", "patch"]),
                rule(&[""], &["pods"], &["delete"]),
                rule(&[""], &["events"], &["create", "update", "patch"]),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update", "patch"],
                ),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![
                json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version",
                "/version/"], "verbs": ["get"]}),
            ],
        ),
        // Prometheus scrapers: kube-apiserver's role, bound to the group of the same name.
        cluster_role(
            "system:monitoring",
            vec![
                json!({"nonResourceURLs": ["/healthz", "/healthz/*", "/livez", "/livez/*",
                "/metrics", "/metrics/slis", "/readyz", "/readyz/*"], "verbs": ["get"]}),
            ],
        ),
    ];
    let binding = |name: &str, group: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name,
                "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
                "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": group}]})
    };
    let bindings = vec![
        binding("cluster-admin", MASTERS_GROUP),
        binding("system:discovery", "system:authenticated"),
        binding("system:basic-user", "system:authenticated"),
        binding("system:public-info-viewer", "system:authenticated"),
        binding("system:monitoring", "system:monitoring"),
    ];
    (roles, bindings)
}

/// Creates the bootstrap roles and bindings that are missing (existing ones, possibly edited
/// by an admin, are left alone).
pub fn ensure_bootstrap(api: &Api) -> Result<(), ApiError> {
    let (roles, bindings) = bootstrap_policy();
    let role_res =
        resources::by_kind("rbac.authorization.k8s.io/v1", "ClusterRole").expect("served");
    let binding_res =
        resources::by_kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding").expect("served");
    for (res, obj) in roles
        .into_iter()
        .map(|r| (role_res, r))
        .chain(bindings.into_iter().map(|b| (binding_res, b)))
    {
        match api.create(res, "", obj, &WriteOptions::default()) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Invalidates the authorizer's snapshot on every RBAC change made outside the HTTP layer
/// (plugins, garbage collection), until `cancel`.
pub async fn run(
    authorizer: Arc<Authorizer>,
    informers: Arc<Informers>,
    cancel: CancellationToken,
) {
    let mut subs: Vec<_> = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
        .iter()
        .map(|k| {
            informers
                .get(resources::by_kind("rbac.authorization.k8s.io/v1", k).expect("served"))
                .subscribe()
        })
        .collect();
    let [a, b, c, d] = subs.as_mut_slice() else {
        unreachable!("four kinds")
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = a.recv() => authorizer.invalidate(),
            Some(_) = b.recv() => authorizer.invalidate(),
            Some(_) = c.recv() => authorizer.invalidate(),
            Some(_) = d.recv() => authorizer.invalidate(),
            else => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str) -> Identity {
        crate::tokens::identity(ns, name)
    }

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v)
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes::resource(verb, group, resource, sub, ns, name)
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let r = rule(json!({"apiGroups": [""], "resources": ["pods", "pods/log"],
            "verbs": ["get", "list"]}));
        assert!(r.allows(&res("get", "", "pods", "", "d", "p")));
        assert!(r.allows(&res("list", "", "pods", "", "d", "")));
        assert!(r.allows(&res("get", "", "pods", "log", "d", "p")));
        assert!(!r.allows(&res("create", "", "pods", "", "d", "")));
        assert!(!r.allows(&res("get", "", "pods", "exec", "d", "p")));
        assert!(!r.allows(&res("get", "apps", "pods", "", "d", "p")));
        assert!(!r.allows(&res("get", "", "secrets", "", "d", "s")));

        let star = rule(json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}));
        assert!(star.allows(&res("delete", "apps", "deployments", "scale", "", "x")));
        assert!(!star.allows(&Attributes::non_resource("get", "/version")));

        let subs = rule(json!({"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}));
        assert!(subs.allows(&res("get", "", "pods", "status", "d", "p")));
        assert!(!subs.allows(&res("get", "", "pods", "", "d", "p")));
        assert!(!subs.allows(&res("get", "", "pods", "log", "d", "p")));

        let named = rule(json!({"apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["one"], "verbs": ["get", "list", "create"]}));
        assert!(named.allows(&res("get", "", "configmaps", "", "d", "one")));
        assert!(!named.allows(&res("get", "", "configmaps", "", "d", "two")));
        // Names restrict nameless requests out, as in Kubernetes.
        assert!(!named.allows(&res("list", "", "configmaps", "", "d", "")));
        assert!(!named.allows(&res("create", "", "configmaps", "", "d", "")));

        let urls = rule(json!({"nonResourceURLs": ["/healthz", "/apis/*"], "verbs": ["get"]}));
        assert!(urls.allows(&Attributes::non_resource("get", "/healthz")));
        assert!(urls.allows(&Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(!urls.allows(&Attributes::non_resource("get", "/api")));
        assert!(!urls.allows(&Attributes::non_resource("post", "/healthz")));
        // A resource request is never matched by a path rule.
        assert!(!urls.allows(&res("get", "", "healthz", "", "", "")));
    }

    fn binding(kind: &str, ns: Option<&str>, role: (&str, &str), subjects: Value) -> Value {
        let mut b = json!({"metadata": {"name": "b"}, "roleRef": {"apiGroup": GROUP,
            "kind": role.0, "name": role.1}, "subjects": subjects, "kind": kind});
        if let Some(ns) = ns {
            b["metadata"]["namespace"] = json!(ns);
        }
        b
    }

    #[test]
    fn bindings_scope_roles_to_their_namespace_and_match_subjects() {
        let reader = json!({"metadata": {"name": "reader", "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
        let (cluster_roles, bindings) = bootstrap_policy();
        let rb = binding(
            "RoleBinding",
            Some("team"),
            ("Role", "reader"),
            json!([{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}]),
        );
        // A RoleBinding to a ClusterRole grants it in the binding's namespace only.
        let rb_edit = binding(
            "RoleBinding",
            Some("ops"),
            ("ClusterRole", "edit"),
            json!([{"kind": "Group", "name": "ops-team", "apiGroup": GROUP},
                   {"kind": "ServiceAccount", "name": "deployer"}]),
        );
        let crb_view = binding(
            "ClusterRoleBinding",
            None,
            ("ClusterRole", "view"),
            json!([{"kind": "User", "name": "alice", "apiGroup": GROUP}]),
        );
        let p = Policy::from_objects(
            &cluster_roles,
            &[reader],
            &[bindings, vec![crb_view]].concat(),
            &[rb, rb_edit],
        );
        let bot = sa("team", "bot");
        assert!(p.allows(&bot, &res("list", "", "pods", "", "team", "")));
        assert!(p.allows(&bot, &res("get", "", "pods", "", "team", "x")));
        assert!(!p.allows(&bot, &res("list", "", "pods", "", "other", "")));
        assert!(!p.allows(&bot, &res("list", "", "pods", "", "", "")));
        assert!(!p.allows(&bot, &res("create", "", "pods", "", "team", "")));
        assert!(!p.allows(
            &sa("other", "bot"),
            &res("list", "", "pods", "", "team", "")
        ));
        // Everyone authenticated reads discovery and asks what they may do.
        assert!(p.allows(&bot, &Attributes::non_resource("get", "/apis/apps/v1")));
        assert!(p.allows(
            &bot,
            &res(
                "create",
                "authorization.k8s.io",
                "selfsubjectaccessreviews",
                "",
                "",
                ""
            )
        ));
        assert!(!p.allows(&bot, &Attributes::non_resource("get", "/metrics")));

        let ops = Identity {
            user: "bob".into(),
            groups: vec!["ops-team".into(), "system:authenticated".into()],
        };
        assert!(p.allows(&ops, &res("create", "apps", "deployments", "", "ops", "")));
        assert!(p.allows(&ops, &res("create", "", "pods", "exec", "ops", "p")));
        assert!(!p.allows(&ops, &res("create", "apps", "deployments", "", "team", "")));
        assert!(!p.allows(&ops, &res("list", "", "nodes", "", "", "")));
        // The namespace-less ServiceAccount subject of a RoleBinding is in its namespace.
        assert!(p.allows(
            &sa("ops", "deployer"),
            &res("delete", "", "secrets", "", "ops", "s")
        ));

        let alice = Identity {
            user: "alice".into(),
            groups: vec!["system:authenticated".into()],
        };
        assert!(p.allows(&alice, &res("list", "", "pods", "", "", "")));
        assert!(p.allows(&alice, &res("watch", "apps", "deployments", "", "any", "")));
        assert!(!p.allows(&alice, &res("get", "", "secrets", "", "any", "s")));
        assert!(!p.allows(&alice, &res("delete", "", "pods", "", "any", "p")));

        // What `kubectl auth can-i --list` shows.
        let listed = p.rules_for(&bot, "team");
        assert!(listed.iter().any(|r| r.resources == ["pods"]), "{listed:?}");
        assert!(listed.iter().any(|r| !r.non_resource_urls.is_empty()));
        assert!(
            !p.rules_for(&bot, "other")
                .iter()
                .any(|r| r.resources == ["pods"])
        );

        let admin = Identity {
            user: "root".into(),
            groups: vec![MASTERS_GROUP.into()],
        };
        assert!(p.allows(&admin, &res("delete", "", "nodes", "", "", "n")));
        assert!(p.allows(&admin, &Attributes::non_resource("get", "/metrics")));
    }

    /// Kubernetes' `edit` and `admin` manage claims, `view` reads them (and their status);
    /// none of them reaches PersistentVolumes or StorageClasses, which are cluster-scoped.
    #[test]
    fn user_facing_roles_cover_persistent_volume_claims() {
        let (cluster_roles, _) = bootstrap_policy();
        let role = |name: &str| {
            cluster_roles
                .iter()
                .find(|r| r["metadata"]["name"] == name)
                .unwrap()
                .clone()
        };
        let bind_to = |name: &str| {
            binding(
                "RoleBinding",
                Some("team"),
                ("ClusterRole", name),
                json!([{"kind": "ServiceAccount", "name": name}]),
            )
        };
        let p = Policy::from_objects(
            &[role("admin"), role("edit"), role("view")],
            &[],
            &[],
            &[bind_to("admin"), bind_to("edit"), bind_to("view")],
        );
        let pvc = |verb: &str, sub: &str| res(verb, "", "persistentvolumeclaims", sub, "team", "c");
        for who in ["admin", "edit"] {
            let u = sa("team", who);
            for verb in [
                "create", "delete", "update", "patch", "get", "list", "watch",
            ] {
                assert!(p.allows(&u, &pvc(verb, "")), "{who} {verb}");
            }
        }
        let view = sa("team", "view");
        for verb in ["get", "list", "watch"] {
            assert!(p.allows(&view, &pvc(verb, "")), "view {verb}");
            assert!(p.allows(&view, &pvc(verb, "status")), "view {verb} status");
        }
        for verb in ["create", "delete", "update", "patch"] {
            assert!(!p.allows(&view, &pvc(verb, "")), "view {verb}");
        }
        assert!(!p.allows(
            &sa("team", "edit"),
            &res("create", "", "persistentvolumes", "", "", "pv")
        ));
    }

    /// As in Kubernetes: `edit` and `admin` proxy to pods and services of their namespace,
    /// `view` does not, and nobody but cluster admins proxies to nodes.
    #[test]
    fn proxy_subresources_follow_kubernetes_roles() {
        let (cluster_roles, _) = bootstrap_policy();
        let role = |name: &str| {
            cluster_roles
                .iter()
                .find(|r| r["metadata"]["name"] == name)
                .unwrap()
                .clone()
        };
        let bind_to = |name: &str| {
            binding(
                "RoleBinding",
                Some("team"),
                ("ClusterRole", name),
                json!([{"kind": "ServiceAccount", "name": name}]),
            )
        };
        let p = Policy::from_objects(
            &[role("admin"), role("edit"), role("view")],
            &[],
            &[],
            &[bind_to("admin"), bind_to("edit"), bind_to("view")],
        );
        for who in ["admin", "edit"] {
            for verb in ["get", "create", "update", "patch", "delete"] {
                for plural in ["pods", "services"] {
                    let a = res(verb, "", plural, "proxy", "team", "web:80");
                    assert!(
                        p.allows(&sa("team", who), &a),
                        "{who} {verb} {plural}/proxy"
                    );
                }
            }
            let node = res("get", "", "nodes", "proxy", "", "n1");
            assert!(!p.allows(&sa("team", who), &node), "{who} nodes/proxy");
        }
        let view = sa("team", "view");
        assert!(!p.allows(&view, &res("get", "", "pods", "proxy", "team", "p")));
        assert!(!p.allows(&view, &res("get", "", "services", "proxy", "team", "s")));
        assert!(
            cluster_roles
                .iter()
                .any(|r| r["metadata"]["name"] == "system:node")
        );
    }

    #[test]
    fn refusals_are_worded_like_kube_apiserver() {
        let e = forbidden(
            &sa("default", "x"),
            &res("list", "", "pods", "", "default", ""),
            "",
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "pods is forbidden: User \"system:serviceaccount:default:x\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let e = forbidden(
            &sa("default", "x"),
            &res("get", "apps", "deployments", "scale", "", "d"),
            "",
        );
        assert_eq!(
            e.message,
            "deployments.apps \"d\" is forbidden: User \"system:serviceaccount:default:x\" cannot get resource \"deployments/scale\" in API group \"apps\" at the cluster scope"
        );
        let e = forbidden(
            &sa("a", "b"),
            &Attributes::non_resource("get", "/metrics"),
            "",
        );
        assert_eq!(
            e.message,
            "forbidden: User \"system:serviceaccount:a:b\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn escalation_is_refused_unless_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = kedge_store::redb::RedbStore::open(
            &dir.path().join("s"),
            kedge_store::redb::Options::default(),
        )
        .unwrap();
        let api = Arc::new(Api::new(Arc::new(store), super::super::ops::system_clock()));
        ensure_bootstrap(&api).unwrap();
        let rb = resources::by_kind("rbac.authorization.k8s.io/v1", "RoleBinding").unwrap();
        let role = resources::by_kind("rbac.authorization.k8s.io/v1", "Role").unwrap();
        let ns = resources::by_kind("v1", "Namespace").unwrap();
        let w = WriteOptions::default();
        api.create(ns, "", json!({"metadata": {"name": "team"}}), &w)
            .unwrap();
        api.create(
            rb,
            "team",
            binding(
                "RoleBinding",
                Some("team"),
                ("ClusterRole", "admin"),
                json!([{"kind": "ServiceAccount", "name": "lead"}]),
            ),
            &w,
        )
        .unwrap();
        let authz = Authorizer::new(api.clone());
        let lead = sa("team", "lead");
        let ok_role = json!({"metadata": {"name": "r", "namespace": "team"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        authz
            .check_escalation(&lead, role, "team", &ok_role)
            .unwrap();
        let wild = json!({"metadata": {"name": "r", "namespace": "team"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
        let e = authz
            .check_escalation(&lead, role, "team", &wild)
            .unwrap_err();
        assert!(e.message.contains("not currently held"), "{}", e.message);
        let to_admin = binding(
            "RoleBinding",
            Some("team"),
            ("ClusterRole", "cluster-admin"),
            json!([{"kind": "ServiceAccount", "name": "lead"}]),
        );
        authz
            .check_escalation(&lead, rb, "team", &to_admin)
            .unwrap_err();
        let to_view = binding(
            "RoleBinding",
            Some("team"),
            ("ClusterRole", "view"),
            json!([{"kind": "ServiceAccount", "name": "x"}]),
        );
        authz.check_escalation(&lead, rb, "team", &to_view).unwrap();
        // A new binding is seen once the snapshot is invalidated.
        let intern = sa("team", "intern");
        let pods = res("list", "", "pods", "", "team", "");
        assert!(!authz.allows(&intern, &pods));
        let mut b = binding(
            "RoleBinding",
            Some("team"),
            ("ClusterRole", "view"),
            json!([{"kind": "ServiceAccount", "name": "intern"}]),
        );
        b["metadata"]["name"] = json!("intern");
        api.create(rb, "team", b, &w).unwrap();
        assert!(!authz.allows(&intern, &pods), "cached until invalidated");
        authz.invalidate();
        assert!(authz.allows(&intern, &pods));
    }
}
