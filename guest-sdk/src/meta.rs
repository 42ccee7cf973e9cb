//! Object metadata helpers: owner references, conditions, labels and timestamps — the
//! bookkeeping every controller repeats.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DeploymentCondition, ReplicaSetCondition};
use k8s_openapi::api::core::v1::{NodeCondition, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition as MetaCondition, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::{Metadata, Resource};

/// The owner reference marked `controller: true`, which decides who manages an object
/// (at most one per object).
///
/// ```
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
/// assert!(kedge_guest::meta::controller_of(&ObjectMeta::default()).is_none());
/// ```
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// An owner reference making `owner` the controller; `blockOwnerDeletion` so foreground
/// deletion of the owner waits for its dependents.
///
/// ```
/// use k8s_openapi::api::apps::v1::ReplicaSet;
/// let mut rs = ReplicaSet::default();
/// rs.metadata.name = Some("web".into());
/// rs.metadata.uid = Some("u1".into());
/// let r = kedge_guest::meta::new_controller_ref(&rs);
/// assert_eq!((r.kind.as_str(), r.controller), ("ReplicaSet", Some(true)));
/// ```
pub fn new_controller_ref<K>(owner: &K) -> OwnerReference
where
    K: Resource + Metadata<Ty = ObjectMeta>,
{
    let meta = owner.metadata();
    OwnerReference {
        api_version: K::API_VERSION.to_owned(),
        kind: K::KIND.to_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Labels of an object, empty when unset, so callers need not juggle `Option`.
///
/// ```
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
/// assert!(kedge_guest::meta::labels_of(&ObjectMeta::default()).is_empty());
/// ```
pub fn labels_of(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

/// Parses the RFC 3339 text of [`Cluster::now`](crate::Cluster::now) into a k8s `Time`.
///
/// ```
/// assert!(kedge_guest::meta::parse_time("2025-01-01T00:00:00Z").is_some());
/// assert!(kedge_guest::meta::parse_time("yesterday").is_none());
/// ```
pub fn parse_time(rfc3339: &str) -> Option<Time> {
    serde_json::from_value(serde_json::Value::String(rfc3339.to_owned())).ok()
}

/// The fields shared by the status conditions of Pods, Nodes, ReplicaSets and Deployments,
/// so one [`set_condition`] serves them all.
pub trait Condition {
    /// `Ready`, `Available`, ...
    fn type_(&self) -> &str;
    /// `True`, `False` or `Unknown`.
    fn status(&self) -> &str;
    /// Machine-readable CamelCase reason.
    fn reason(&self) -> Option<&str>;
    /// Human-readable message.
    fn message(&self) -> Option<&str>;
    /// When `status` last changed.
    fn last_transition_time(&self) -> Option<&Time>;
    /// Carries the old transition time over when the status did not change.
    fn set_last_transition_time(&mut self, time: Option<Time>);
}

macro_rules! impl_condition {
    ($($ty:ty),*) => {$(
        impl Condition for $ty {
            fn type_(&self) -> &str { &self.type_ }
            fn status(&self) -> &str { &self.status }
            fn reason(&self) -> Option<&str> { self.reason.as_deref() }
            fn message(&self) -> Option<&str> { self.message.as_deref() }
            fn last_transition_time(&self) -> Option<&Time> { self.last_transition_time.as_ref() }
            fn set_last_transition_time(&mut self, time: Option<Time>) { self.last_transition_time = time; }
        }
    )*};
}

impl_condition!(
    DeploymentCondition,
    ReplicaSetCondition,
    PodCondition,
    NodeCondition
);

/// `metav1.Condition`, the condition type of custom kinds' statuses: its `reason`, `message`
/// and `lastTransitionTime` are required fields, so an empty reason or message reads as none
/// and a `None` time leaves the one set.
///
/// ```
/// use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
/// use kedge_guest::meta::{parse_time, set_condition};
/// let ready = |status: &str, t: &str| Condition {
///     type_: "Ready".into(), status: status.into(), reason: "Written".into(),
///     message: String::new(), observed_generation: Some(1),
///     last_transition_time: parse_time(t).unwrap(),
/// };
/// let mut conds = vec![ready("True", "2025-01-01T00:00:00Z")];
/// assert!(!set_condition(&mut conds, ready("True", "2025-02-01T00:00:00Z")));
/// assert!(set_condition(&mut conds, ready("False", "2025-03-01T00:00:00Z")));
/// assert_eq!(conds[0].last_transition_time, parse_time("2025-03-01T00:00:00Z").unwrap());
/// ```
impl Condition for MetaCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
    fn reason(&self) -> Option<&str> {
        Some(self.reason.as_str()).filter(|r| !r.is_empty())
    }
    fn message(&self) -> Option<&str> {
        Some(self.message.as_str()).filter(|m| !m.is_empty())
    }
    fn last_transition_time(&self) -> Option<&Time> {
        Some(&self.last_transition_time)
    }
    fn set_last_transition_time(&mut self, time: Option<Time>) {
        if let Some(t) = time {
            self.last_transition_time = t;
        }
    }
}

/// The condition of a given type, if present.
///
/// ```
/// use k8s_openapi::api::core::v1::PodCondition;
/// let conds = vec![PodCondition { type_: "Ready".into(), status: "True".into(), ..Default::default() }];
/// assert_eq!(kedge_guest::meta::find_condition(&conds, "Ready").map(|c| c.status.as_str()), Some("True"));
/// ```
pub fn find_condition<'a, C: Condition>(conditions: &'a [C], type_: &str) -> Option<&'a C> {
    conditions.iter().find(|c| c.type_() == type_)
}

/// Sets `new` in `conditions`, replacing the one of the same type. When status, reason and
/// message are all unchanged nothing is touched (so timestamps do not churn and a
/// level-triggered reconcile writes nothing); when only reason or message changed, the old
/// `lastTransitionTime` is kept. Returns whether anything changed.
///
/// ```
/// use k8s_openapi::api::apps::v1::DeploymentCondition;
/// use kedge_guest::meta::{parse_time, set_condition};
/// let cond = |status: &str, t: &str| DeploymentCondition {
///     type_: "Available".into(), status: status.into(),
///     last_transition_time: parse_time(t), ..Default::default()
/// };
/// let mut conds = vec![];
/// assert!(set_condition(&mut conds, cond("True", "2025-01-01T00:00:00Z")));
/// assert!(!set_condition(&mut conds, cond("True", "2025-01-02T00:00:00Z")));
/// assert_eq!(conds[0].last_transition_time, parse_time("2025-01-01T00:00:00Z"));
/// ```
pub fn set_condition<C: Condition>(conditions: &mut Vec<C>, mut new: C) -> bool {
    match conditions.iter_mut().find(|c| c.type_() == new.type_()) {
        None => {
            conditions.push(new);
            true
        }
        Some(old) => {
            if old.status() == new.status()
                && old.reason() == new.reason()
                && old.message() == new.message()
            {
                return false;
            }
            if old.status() == new.status() {
                new.set_last_transition_time(old.last_transition_time().cloned());
            }
            *old = new;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: &str, reason: &str, t: &str) -> PodCondition {
        PodCondition {
            type_: "PodScheduled".into(),
            status: status.into(),
            reason: Some(reason.into()),
            last_transition_time: parse_time(t),
            ..Default::default()
        }
    }

    #[test]
    fn transition_time_only_moves_with_status() {
        let mut conds = vec![cond("False", "Unschedulable", "2025-01-01T00:00:00Z")];
        assert!(!set_condition(
            &mut conds,
            cond("False", "Unschedulable", "2025-01-02T00:00:00Z")
        ));
        assert!(set_condition(
            &mut conds,
            cond("False", "Other", "2025-01-03T00:00:00Z")
        ));
        assert_eq!(conds[0].reason.as_deref(), Some("Other"));
        assert_eq!(
            conds[0].last_transition_time,
            parse_time("2025-01-01T00:00:00Z")
        );
        assert!(set_condition(
            &mut conds,
            cond("True", "Other", "2025-01-04T00:00:00Z")
        ));
        assert_eq!(
            conds[0].last_transition_time,
            parse_time("2025-01-04T00:00:00Z")
        );
        assert_eq!(conds.len(), 1);
    }

    #[test]
    fn controller_ref_is_found_among_others() {
        let mut meta = ObjectMeta::default();
        assert!(controller_of(&meta).is_none());
        let plain = OwnerReference {
            name: "a".into(),
            uid: "1".into(),
            ..Default::default()
        };
        let ctrl = OwnerReference {
            name: "b".into(),
            uid: "2".into(),
            controller: Some(true),
            ..Default::default()
        };
        meta.owner_references = Some(vec![plain, ctrl]);
        assert_eq!(controller_of(&meta).map(|r| r.uid.as_str()), Some("2"));
    }
}
