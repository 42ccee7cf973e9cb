//! Roles, ClusterRoles, RoleBindings and ClusterRoleBindings: RBAC names (path segments),
//! rules that say what they grant, bindings to a role of the right scope, and a fixed roleRef.
//! The authorizer that reads them is [`crate::rbac`].

use k8s_openapi::api::rbac::v1 as rbac;
use serde_json::{Value, json};

use super::common::invalid_raw;
use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use crate::rbac::{GROUP, Rule};
use kedge_core::resources::Resource;

/// Role or ClusterRole (`res.namespaced` tells them apart).
pub(super) struct Role {
    typed: Option<&'static dyn Typed>,
}

/// RoleBinding or ClusterRoleBinding (`res.namespaced` tells them apart).
pub(super) struct Binding {
    typed: Option<&'static dyn Typed>,
}

pub(super) static ROLE: Role = Role {
    typed: typed::<rbac::Role>(),
};
pub(super) static CLUSTER_ROLE: Role = Role {
    typed: typed::<rbac::ClusterRole>(),
};
pub(super) static ROLE_BINDING: Binding = Binding {
    typed: typed::<rbac::RoleBinding>(),
};
pub(super) static CLUSTER_ROLE_BINDING: Binding = Binding {
    typed: typed::<rbac::ClusterRoleBinding>(),
};

static ROLE_COLUMNS: [Column; 2] = [col("Name", "string", 0), col("Created At", "string", 0)];

static BINDING_COLUMNS: [Column; 6] = [
    col("Name", "string", 0),
    col("Role", "string", 0),
    col("Age", "string", 0),
    col("Users", "string", 1),
    col("Groups", "string", 1),
    col("ServiceAccounts", "string", 1),
];

impl KindRules for Role {
    fn check_name(&self, name: &str) -> Result<(), String> {
        validate_name(name)
    }

    fn validate(&self, res: &Resource, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_role(res, obj, causes);
    }

    fn columns(&self) -> &'static [Column] {
        &ROLE_COLUMNS
    }

    fn cells(&self, o: &Value, _now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![name(o), json!(s(o, CREATED))]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        self.typed
    }
}

impl KindRules for Binding {
    fn check_name(&self, name: &str) -> Result<(), String> {
        validate_name(name)
    }

    fn default(&self, obj: &mut Value) {
        default_subjects(obj);
    }

    fn validate(&self, res: &Resource, obj: &Value, _old: Option<&Value>, causes: &mut Vec<Cause>) {
        validate_binding(res, obj, causes);
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        if old.get("roleRef") != new.get("roleRef") {
            causes.push(invalid_raw(
                "roleRef",
                &new.get("roleRef").map(Value::to_string).unwrap_or_default(),
                "cannot change roleRef",
            ));
        }
    }

    fn columns(&self) -> &'static [Column] {
        &BINDING_COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        // kubectl's printer: subjects of each kind joined by ", ", service accounts as
        // namespace/name.
        let subjects = |kind: &str| -> String {
            o.get("subjects")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|x| x["kind"] == kind)
                .map(|x| match (kind, s(x, "/namespace")) {
                    ("ServiceAccount", ns) => format!("{ns}/{}", s(x, "/name")),
                    _ => s(x, "/name").to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                s(o, "/roleRef/kind"),
                s(o, "/roleRef/name")
            )),
            json!(age(o, CREATED, now)),
            json!(subjects("User")),
            json!(subjects("Group")),
            json!(subjects("ServiceAccount")),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        self.typed
    }
}

/// kube's defaulting of binding subjects: Users and Groups are in the RBAC API group.
fn default_subjects(obj: &mut Value) {
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            let kind = s.get("kind").and_then(Value::as_str).unwrap_or_default();
            if matches!(kind, "User" | "Group")
                && s.get("apiGroup")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                s["apiGroup"] = json!(GROUP);
            }
        }
    }
}

/// kube's `ValidatePolicyRule` over a Role's or ClusterRole's rules.
fn validate_role(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let rules = obj.get("rules").and_then(Value::as_array);
    for (i, v) in rules.into_iter().flatten().enumerate() {
        let at = format!("rules[{i}]");
        let r = Rule::from_json(v);
        if r.verbs.is_empty() {
            causes.push(Cause {
                message: "Required value: verbs must contain at least one value".into(),
                ..Cause::required(format!("{at}.verbs"))
            });
        }
        if !r.non_resource_urls.is_empty() {
            let urls = format!("[]string{{{}}}", quoted(&r.non_resource_urls));
            if res.namespaced {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: format!("{at}.nonResourceURLs"),
                    message: format!(
                        "Invalid value: {urls}: namespaced rules cannot apply to non-resource URLs"
                    ),
                });
            }
            if !r.api_groups.is_empty() || !r.resources.is_empty() {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: format!("{at}.nonResourceURLs"),
                    message: format!(
                        "Invalid value: {urls}: rules cannot apply to both regular resources and non-resource URLs"
                    ),
                });
            }
            continue;
        }
        if r.api_groups.is_empty() {
            causes.push(Cause {
                message: "Required value: resource rules must supply at least one api group".into(),
                ..Cause::required(format!("{at}.apiGroups"))
            });
        }
        if r.resources.is_empty() {
            causes.push(Cause {
                message: "Required value: resource rules must supply at least one resource".into(),
                ..Cause::required(format!("{at}.resources"))
            });
        }
    }
}

/// RBAC object names are path segments (`system:discovery` is one), as kube's
/// `ValidateRBACName`.
fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("may not be '{name}'"));
    }
    for bad in ["/", "%"] {
        if name.contains(bad) {
            return Err(format!("may not contain '{bad}'"));
        }
    }
    Ok(())
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// kube's `ValidateRoleBinding` / `ValidateClusterRoleBinding`.
fn validate_binding(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let group = s(role_ref, "apiGroup");
    if group != GROUP {
        causes.push(Cause::unsupported("roleRef.apiGroup", &group, &[GROUP]));
    }
    let kind = s(role_ref, "kind");
    let kinds: &[&str] = if res.namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&kind.as_str()) {
        causes.push(Cause::unsupported("roleRef.kind", &kind, kinds));
    }
    let name = s(role_ref, "name");
    if name.is_empty() {
        causes.push(Cause::required("roleRef.name"));
    } else if let Err(why) = validate_name(&name) {
        causes.push(Cause::invalid("roleRef.name", &name, why));
    }
    let subjects = obj.get("subjects").and_then(Value::as_array);
    for (i, sub) in subjects.into_iter().flatten().enumerate() {
        let at = format!("subjects[{i}]");
        if s(sub, "name").is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        }
        let group = s(sub, "apiGroup");
        match s(sub, "kind").as_str() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    causes.push(Cause::unsupported(format!("{at}.apiGroup"), &group, &[""]));
                }
                if !res.namespaced && s(sub, "namespace").is_empty() {
                    causes.push(Cause::required(format!("{at}.namespace")));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    causes.push(Cause::unsupported(
                        format!("{at}.apiGroup"),
                        &group,
                        &[GROUP],
                    ));
                }
            }
            other => causes.push(Cause::unsupported(
                format!("{at}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_core::resources;

    #[test]
    fn validation_requires_the_essentials() {
        let role = resources::by_kind("rbac.authorization.k8s.io/v1", "Role").unwrap();
        let crb = resources::by_kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding").unwrap();
        let mut causes = Vec::new();
        validate_role(
            role,
            &json!({"rules": [{"apiGroups": [""], "resources": ["pods"]},
                {"nonResourceURLs": ["/x"], "verbs": ["get"]}, {"verbs": ["get"]}]}),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "rules[0].verbs",
                "rules[1].nonResourceURLs",
                "rules[2].apiGroups",
                "rules[2].resources"
            ]
        );
        let mut causes = Vec::new();
        validate_binding(
            crb,
            &json!({"roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "x"},
                "subjects": [{"kind": "ServiceAccount", "name": "a"}, {"kind": "Robot", "name": "r"}]}),
            &mut causes,
        );
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"]
        );
    }
}
