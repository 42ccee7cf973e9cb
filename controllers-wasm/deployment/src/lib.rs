//! The Deployment controller as a kedge plugin, following Kubernetes' deployment controller
//! (pkg/controller/deployment) rule for rule: one ReplicaSet per pod-template version, named
//! `<deployment>-<pod-template-hash>`, whose `deployment.kubernetes.io/revision` orders the
//! rollout history.
//!
//! Honoured:
//! - `RollingUpdate` paced by `maxSurge` / `maxUnavailable` (integers or percentages of
//!   `spec.replicas`, surge rounded up, unavailability down, 1 unavailable when both are 0;
//!   unset values default to 25% as the API server does): the new ReplicaSet grows while all
//!   ReplicaSets together stay within `replicas + maxSurge`, old ones shrink, their
//!   unavailable pods first, so that at least `replicas - maxUnavailable` pods stay available.
//!   A template whose pods never become ready stops there: old pods keep serving.
//! - `Recreate`: old ReplicaSets go to 0, the new one is created or scaled up only once no
//!   pod of an old ReplicaSet is left (terminating ones included; polled, since their
//!   disappearance changes no ReplicaSet).
//! - `minReadySeconds` is copied into the ReplicaSets, whose controller counts a pod as
//!   available only after being ready that long; the pacing above uses those counts.
//! - `progressDeadlineSeconds`: the `Progressing` condition with Kubernetes' reasons and
//!   messages (NewReplicaSetCreated, FoundNewReplicaSet, ReplicaSetUpdated,
//!   NewReplicaSetAvailable, ProgressDeadlineExceeded with status False), re-checked by a
//!   requeue at the deadline; `Available` (MinimumReplicasAvailable / ...Unavailable) against
//!   `replicas - maxUnavailable`.
//! - `revisionHistoryLimit`: old ReplicaSets scaled to 0 beyond the limit are deleted,
//!   lowest revision first, once a rollout is complete (or while paused).
//! - Adoption: ReplicaSets in the namespace matching the selector without a controller are
//!   adopted, owned ones that stopped matching are released (Kubernetes' ControllerRefManager);
//!   the ReplicaSet controller adopts their pods in turn.
//! - `paused`: no rollout (no new ReplicaSet), only scaling and history clean-up; Progressing
//!   turns `Unknown`/DeploymentPaused, then DeploymentResumed, which restarts the deadline.
//! - Resizes during a rollout are spread over the ReplicaSets proportionally, using the
//!   `desired-replicas` / `max-replicas` annotations Kubernetes keeps on them.
//! - Rollback (`kubectl rollout undo` patches the template back): the old ReplicaSet whose
//!   template matches becomes the new one and gets the next revision number.
//!
//! Not implemented: hash collisions (`status.collisionCount`), the ReplicaFailure condition.

mod pacing;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Event, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_guest::meta::{controller_of, labels_of, new_controller_ref, parse_time};
use kedge_guest::pod::{POD_TEMPLATE_HASH_LABEL, pod_template_hash};
use kedge_guest::selector::Selector;
use kedge_guest::{
    ApiError, ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};
use serde_json::{Map, Value, json};

use pacing::Size;

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "deployment-controller";

/// Annotation carrying the rollout revision on Deployments and their ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// The earlier revisions a ReplicaSet had before a rollback made it new again.
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// `spec.replicas` of the Deployment when it last scaled this ReplicaSet.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// `spec.replicas + maxSurge` of the Deployment when it last scaled this ReplicaSet: the
/// reference for proportional scaling.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Copied from the Deployment to its current ReplicaSet (like every annotation but
/// [`ANNOTATIONS_TO_SKIP`]), where `kubectl rollout history` reads it as CHANGE-CAUSE.
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// Deployment annotations Kubernetes never copies to a ReplicaSet: they describe the
/// Deployment or the ReplicaSet itself.
const ANNOTATIONS_TO_SKIP: [&str; 6] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
    DESIRED_REPLICAS_ANNOTATION,
    MAX_REPLICAS_ANNOTATION,
    "deprecated.deployment.rollback.to",
];

// Progressing reasons, worded as Kubernetes' deployment controller words them; `kubectl
// rollout status` fails on `ProgressDeadlineExceeded`.
const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
const RS_UPDATED: &str = "ReplicaSetUpdated";
const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
const TIMED_OUT: &str = "ProgressDeadlineExceeded";
const PAUSED: &str = "DeploymentPaused";
const RESUMED: &str = "DeploymentResumed";

/// How often a Recreate rollout looks again while pods of old ReplicaSets are still
/// terminating: their disappearance changes no ReplicaSet, so no event would come.
const OLD_PODS_POLL_MS: u64 = 2_000;

/// What the API server defaults `revisionHistoryLimit` and `progressDeadlineSeconds` to; an
/// object stored without them behaves the same.
const DEFAULT_HISTORY_LIMIT: i32 = 10;
const DEFAULT_PROGRESS_DEADLINE: i32 = 600;

/// The plugin type wired to the component exports.
pub struct DeploymentController;

impl Controller for DeploymentController {
    fn registration() -> Registration {
        Registration::new("deployment", KindRef::of::<Deployment>())
            .owns([KindRef::of::<ReplicaSet>()])
            // Recreate waits for the old ReplicaSets' pods to be gone.
            .reads([KindRef::of::<Pod>()])
            .writes([
                KindRef::of::<ReplicaSet>(),
                KindRef::of::<Deployment>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(DeploymentController);

/// How pods are replaced, with RollingUpdate's budgets resolved to pod counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    Recreate,
    RollingUpdate {
        max_surge: i32,
        max_unavailable: i32,
    },
}

impl Strategy {
    /// Kubernetes' `MaxSurge` / `MaxUnavailable` for `desired` replicas (unavailability never
    /// above `desired`).
    fn of(spec: &DeploymentSpec, desired: i32) -> Result<Self, String> {
        let strategy = spec.strategy.as_ref();
        match strategy
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate")
        {
            "Recreate" => Ok(Self::Recreate),
            "RollingUpdate" => {
                let ru = strategy.and_then(|s| s.rolling_update.as_ref());
                // The API server's default for each unset value.
                let quarter = IntOrString::String("25%".into());
                let surge = ru.map_or(Some(&quarter), |r| {
                    Some(r.max_surge.as_ref().unwrap_or(&quarter))
                });
                let unavailable = ru.map_or(Some(&quarter), |r| {
                    Some(r.max_unavailable.as_ref().unwrap_or(&quarter))
                });
                let (max_surge, max_unavailable) = pacing::fenceposts(surge, unavailable, desired)?;
                Ok(Self::RollingUpdate {
                    max_surge,
                    max_unavailable: max_unavailable.min(desired),
                })
            }
            other => Err(format!("unsupported strategy type {other:?}")),
        }
    }

    fn max_surge(self) -> i32 {
        match self {
            Self::Recreate => 0,
            Self::RollingUpdate { max_surge, .. } => max_surge,
        }
    }

    fn max_unavailable(self) -> i32 {
        match self {
            Self::Recreate => 0,
            Self::RollingUpdate {
                max_unavailable, ..
            } => max_unavailable,
        }
    }
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn revision(meta: &ObjectMeta) -> u64 {
    annotation(meta, REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn int_annotation(meta: &ObjectMeta, key: &str) -> Option<i32> {
    annotation(meta, key).and_then(|v| v.parse().ok())
}

fn template_hash(rs: &ReplicaSet) -> Option<&str> {
    rs.spec
        .as_ref()?
        .template
        .as_ref()?
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(POD_TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn size(rs: &ReplicaSet) -> Size {
    Size {
        spec: spec_replicas(rs),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

/// A template without the pod-template-hash label, for Kubernetes' `EqualIgnoreHash`.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = template.clone();
    if let Some(meta) = t.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
            if labels.is_empty() {
                meta.labels = None;
            }
        }
        if *meta == ObjectMeta::default() {
            t.metadata = None;
        }
    }
    t
}

/// `ScalingReplicaSet`, worded as Kubernetes' deployment controller does.
fn scaled_event(cluster: &dyn Cluster, deploy: &Deployment, rs: &str, from: i32, to: i32) {
    if from == to {
        return;
    }
    let dir = if to > from { "up" } else { "down" };
    let _ = cluster.record_event(
        deploy,
        "Normal",
        "ScalingReplicaSet",
        &format!("Scaled {dir} replica set {rs} from {from} to {to}"),
        COMPONENT,
    );
}

/// Kubernetes' `SetDeploymentCondition`: a condition of the same status and reason is kept
/// as it is (message and times included); a changed reason keeps the transition time while
/// the status stays.
fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut new: DeploymentCondition) {
    if let Some(old) = conditions.iter().find(|c| c.type_ == new.type_) {
        if old.status == new.status && old.reason == new.reason {
            return;
        }
        if old.status == new.status {
            new.last_transition_time = old.last_transition_time.clone();
        }
    }
    conditions.retain(|c| c.type_ != new.type_);
    conditions.push(new);
}

fn progressing(status: &DeploymentStatus) -> Option<&DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
}

/// Kubernetes' `DeploymentComplete`: every replica updated and available, nothing old left.
fn complete(desired: i32, generation: Option<i64>, st: &DeploymentStatus) -> bool {
    st.updated_replicas == Some(desired)
        && st.replicas == Some(desired)
        && st.available_replicas == Some(desired)
        && st.observed_generation.unwrap_or(0) >= generation.unwrap_or(0)
}

/// Kubernetes' `DeploymentProgressing`: more updated, ready or available pods, or fewer old
/// ones, than the last status said.
fn made_progress(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let n = |v: Option<i32>| v.unwrap_or(0);
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(new.replicas) - n(new.updated_replicas);
    n(new.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(new.ready_replicas) > n(old.ready_replicas)
        || n(new.available_replicas) > n(old.available_replicas)
}

fn millis(t: &Time) -> i64 {
    t.0.as_millisecond()
}

/// One reconcile of one Deployment: the ReplicaSets it controls, oldest first, which of them
/// is the new one, and the status being built. Every write updates `rss` so later steps see
/// the post-write truth, as Kubernetes' controller does with the objects its calls return.
struct Sync<'a> {
    cluster: &'a dyn Cluster,
    ns: String,
    deploy: Deployment,
    spec: DeploymentSpec,
    desired: i32,
    strategy: Strategy,
    now: Option<Time>,
    rss: Vec<ReplicaSet>,
    new: Option<usize>,
    /// The stored status with the conditions this reconcile already changed.
    status: DeploymentStatus,
    /// `None` when `progressDeadlineSeconds` is "never" (Kubernetes: MaxInt32).
    deadline_secs: Option<i32>,
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let Some(deploy) = cluster.get::<Deployment>(ns, &key.name)? else {
        return Ok(Outcome::done());
    };
    if deploy.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let Some(spec) = deploy.spec.clone() else {
        return Ok(Outcome::done());
    };
    let selector = match Selector::from_label_selector(&spec.selector) {
        Ok(s) if !s.requirements().is_empty() => s,
        Ok(_) => return invalid(cluster, key, "empty selector"),
        Err(e) => return invalid(cluster, key, &e.to_string()),
    };
    let desired = spec.replicas.unwrap_or(1).max(0);
    let strategy = match Strategy::of(&spec, desired) {
        Ok(s) => s,
        Err(e) => return invalid(cluster, key, &e),
    };
    let mut rss = claim_replica_sets(cluster, &deploy, &selector)?;
    rss.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let deadline_secs = match spec
        .progress_deadline_seconds
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE)
    {
        i32::MAX => None,
        s => Some(s),
    };
    let mut sync = Sync {
        cluster,
        ns: ns.to_owned(),
        status: deploy.status.clone().unwrap_or_default(),
        deploy,
        desired,
        strategy,
        now: parse_time(&cluster.now()),
        new: None,
        rss,
        deadline_secs,
        spec,
    };
    sync.new = sync.find_new();
    sync.check_paused_conditions();
    if sync.spec.paused == Some(true) {
        return sync.sync_scale();
    }
    sync.sync_new_rs(false)?;
    if sync.is_scaling_event() {
        return sync.sync_scale();
    }
    match strategy {
        Strategy::Recreate => sync.rollout_recreate(),
        Strategy::RollingUpdate { .. } => sync.rollout_rolling(),
    }
}

/// Kubernetes' `ClaimReplicaSets`: the ReplicaSets `deploy` controls and that match its
/// selector, after adopting matching orphans and releasing owned ones that stopped matching.
/// A ReplicaSet that changed meanwhile is skipped; its own event brings a fresh view.
fn claim_replica_sets(
    cluster: &dyn Cluster,
    deploy: &Deployment,
    selector: &Selector,
) -> Result<Vec<ReplicaSet>> {
    let ns = deploy.metadata.namespace.as_deref().unwrap_or("default");
    let uid = deploy.metadata.uid.clone().unwrap_or_default();
    let mut owned = Vec::new();
    for rs in cluster.list::<ReplicaSet>(ns, "")? {
        let name = rs.metadata.name.clone().unwrap_or_default();
        let matches = selector.matches(labels_of(&rs.metadata));
        let deleting = rs.metadata.deletion_timestamp.is_some();
        match controller_of(&rs.metadata) {
            Some(r) if r.uid == uid && matches => owned.push(rs),
            Some(r) if r.uid == uid => {
                if deleting {
                    continue;
                }
                let rest: Vec<_> = rs
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|o| o.uid != uid)
                    .collect();
                let patch = json!({"metadata": {"ownerReferences": rest, "uid": rs.metadata.uid}});
                cluster
                    .patch_merge::<ReplicaSet>(ns, &name, &patch)
                    .ignore_stale()?;
                cluster.log(LogLevel::Info, &format!("released replicaset {ns}/{name}"));
            }
            None if matches && !deleting => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(new_controller_ref(deploy));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs.metadata.uid}});
                if let Some(adopted) = cluster
                    .patch_merge::<ReplicaSet>(ns, &name, &patch)
                    .ignore_stale()?
                {
                    cluster.log(LogLevel::Info, &format!("adopted replicaset {ns}/{name}"));
                    owned.push(adopted);
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

impl Sync<'_> {
    fn name(&self) -> &str {
        self.deploy.metadata.name.as_deref().unwrap_or("")
    }

    fn rs_name(&self, i: usize) -> String {
        self.rss[i].metadata.name.clone().unwrap_or_default()
    }

    fn old(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rss.len()).filter(move |&i| Some(i) != self.new)
    }

    fn condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        message: String,
    ) -> DeploymentCondition {
        DeploymentCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_update_time: self.now.clone(),
            last_transition_time: self.now.clone(),
        }
    }

    fn set_condition(&mut self, c: DeploymentCondition) {
        set_condition(self.status.conditions.get_or_insert_default(), c);
    }

    /// Kubernetes' `FindNewReplicaSet`: the oldest ReplicaSet whose template equals the
    /// Deployment's, ignoring the hash label (so a rollback finds the old one again). A
    /// matching hash label is the fallback, for templates that differ only in defaults.
    fn find_new(&self) -> Option<usize> {
        let want = without_hash(&self.spec.template);
        let hash = pod_template_hash(&self.spec.template);
        let template = |rs: &ReplicaSet| rs.spec.as_ref().and_then(|s| s.template.clone());
        self.rss
            .iter()
            .position(|rs| template(rs).is_some_and(|t| without_hash(&t) == want))
            .or_else(|| {
                self.rss
                    .iter()
                    .position(|rs| template_hash(rs) == Some(hash.as_str()))
            })
    }

    /// Kubernetes' `checkPausedConditions`: Progressing says the Deployment is paused or was
    /// resumed, unless it already reported a missed deadline.
    fn check_paused_conditions(&mut self) {
        if self.deadline_secs.is_none() {
            return;
        }
        let reason = progressing(&self.status).and_then(|c| c.reason.clone());
        if reason.as_deref() == Some(TIMED_OUT) {
            return;
        }
        let paused_reported = reason.as_deref() == Some(PAUSED);
        let paused = self.spec.paused == Some(true);
        if paused && !paused_reported {
            let c = self.condition(
                "Progressing",
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
            );
            self.set_condition(c);
        } else if !paused && paused_reported {
            let c = self.condition(
                "Progressing",
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
            );
            self.set_condition(c);
        }
    }

    /// Kubernetes' `getNewReplicaSet`: brings the new ReplicaSet's annotations (revision,
    /// copied Deployment annotations) and `minReadySeconds` up to date, or creates it when
    /// `create` and it does not exist yet.
    fn sync_new_rs(&mut self, create: bool) -> Result<()> {
        let max_old = self
            .old()
            .map(|i| revision(&self.rss[i].metadata))
            .max()
            .unwrap_or(0);
        let next = max_old + 1;
        if let Some(n) = self.new {
            self.update_new_rs(n, next)?;
            if self.deadline_secs.is_some() && progressing(&self.status).is_none() {
                let msg = format!("Found new replica set {:?}", self.rs_name(n));
                let c = self.condition("Progressing", "True", FOUND_NEW_RS, msg);
                self.set_condition(c);
            }
            return Ok(());
        }
        if !create {
            return Ok(());
        }
        let replicas = match self.strategy {
            Strategy::Recreate => self.desired,
            Strategy::RollingUpdate { max_surge, .. } => {
                let all: i32 = self.rss.iter().map(spec_replicas).sum();
                pacing::new_rs_replicas(self.desired, max_surge, all, 0)
            }
        };
        let rs = self.new_replica_set(replicas, next);
        let name = rs.metadata.name.clone().unwrap_or_default();
        let created = match self.cluster.create(&self.ns, &rs) {
            Ok(c) => c,
            Err(ApiError::AlreadyExists(_)) => {
                // Ours already (a view that lagged behind a create) or a hash collision.
                let existing = self.cluster.get::<ReplicaSet>(&self.ns, &name)?;
                let uid = self.deploy.metadata.uid.as_deref();
                match existing {
                    Some(e)
                        if controller_of(&e.metadata).map(|r| r.uid.as_str()) == uid
                            && e.spec
                                .as_ref()
                                .and_then(|s| s.template.as_ref())
                                .map(without_hash)
                                == Some(without_hash(&self.spec.template)) =>
                    {
                        self.rss.push(e);
                        self.new = Some(self.rss.len() - 1);
                        return Ok(());
                    }
                    _ => {
                        return Err(kedge_guest::Error::msg(format!(
                            "replicaset {}/{name} exists with another template (hash collision)",
                            self.ns
                        )));
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.cluster.log(
            LogLevel::Info,
            &format!("created replicaset {}/{name}", self.ns),
        );
        scaled_event(self.cluster, &self.deploy, &name, 0, replicas);
        self.rss.push(created);
        self.new = Some(self.rss.len() - 1);
        if self.deadline_secs.is_some() {
            let msg = format!("Created new replica set {name:?}");
            let c = self.condition("Progressing", "True", NEW_RS_CREATED, msg);
            self.set_condition(c);
        }
        Ok(())
    }

    /// The Deployment's annotations as Kubernetes copies them to its new ReplicaSet.
    fn copied_annotations(&self) -> BTreeMap<String, String> {
        self.deploy
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| !ANNOTATIONS_TO_SKIP.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn replicas_annotations(&self) -> [(String, String); 2] {
        [
            (DESIRED_REPLICAS_ANNOTATION.into(), self.desired.to_string()),
            (
                MAX_REPLICAS_ANNOTATION.into(),
                (self.desired + self.strategy.max_surge()).to_string(),
            ),
        ]
    }

    /// Kubernetes' `SetNewReplicaSetAnnotations` and minReadySeconds sync for an existing
    /// new ReplicaSet: a rollback makes an old template current again, so it becomes the
    /// newest revision, its earlier one remembered in the revision history.
    fn update_new_rs(&mut self, n: usize, next: u64) -> Result<()> {
        let rs = &self.rss[n];
        let mut annotations = Map::new();
        for (k, v) in self.copied_annotations() {
            if annotation(&rs.metadata, &k) != Some(v.as_str()) {
                annotations.insert(k, json!(v));
            }
        }
        let current = annotation(&rs.metadata, REVISION_ANNOTATION);
        if revision(&rs.metadata) < next {
            annotations.insert(REVISION_ANNOTATION.into(), json!(next.to_string()));
            if let Some(old) = current.filter(|r| !r.is_empty()) {
                let history = match annotation(&rs.metadata, REVISION_HISTORY_ANNOTATION) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old.to_owned(),
                };
                annotations.insert(REVISION_HISTORY_ANNOTATION.into(), json!(history));
            }
        }
        let mut patch = Map::new();
        if !annotations.is_empty() {
            patch.insert("metadata".into(), json!({ "annotations": annotations }));
        }
        let want_min_ready = self.spec.min_ready_seconds.unwrap_or(0);
        if rs
            .spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
            != want_min_ready
        {
            patch.insert("spec".into(), json!({ "minReadySeconds": want_min_ready }));
        }
        if !patch.is_empty() {
            let name = self.rs_name(n);
            self.rss[n] = self
                .cluster
                .patch_merge::<ReplicaSet>(&self.ns, &name, &patch.into())?;
        }
        Ok(())
    }

    /// The ReplicaSet for the current template: selector and labels extended with the hash
    /// so it never selects pods of another template version.
    fn new_replica_set(&self, replicas: i32, rev: u64) -> ReplicaSet {
        let hash = pod_template_hash(&self.spec.template);
        let mut template = self.spec.template.clone();
        let tmeta = template.metadata.get_or_insert_default();
        tmeta
            .labels
            .get_or_insert_default()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut selector = self.spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_default()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.clone());
        let mut annotations = self.copied_annotations();
        annotations.insert(REVISION_ANNOTATION.into(), rev.to_string());
        annotations.extend(self.replicas_annotations());
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(format!("{}-{hash}", self.name())),
                namespace: self.deploy.metadata.namespace.clone(),
                labels: tmeta.labels.clone(),
                annotations: Some(annotations),
                owner_references: Some(vec![new_controller_ref(&self.deploy)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector,
                template: Some(template),
                min_ready_seconds: self.spec.min_ready_seconds,
            }),
            status: None,
        }
    }

    /// Kubernetes' `scaleReplicaSet`: sets `spec.replicas` and the replicas annotations when
    /// either differs, with a ScalingReplicaSet event when the size moved.
    fn resize(&mut self, i: usize, to: i32) -> Result<()> {
        let rs = &self.rss[i];
        let from = spec_replicas(rs);
        let annotations = self.replicas_annotations();
        let stale = annotations
            .iter()
            .any(|(k, v)| annotation(&rs.metadata, k) != Some(v.as_str()));
        if from == to && !stale {
            return Ok(());
        }
        let annotations: Map<String, Value> = annotations
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect();
        let patch = json!({"spec": {"replicas": to}, "metadata": {"annotations": annotations}});
        let name = self.rs_name(i);
        self.rss[i] = self
            .cluster
            .patch_merge::<ReplicaSet>(&self.ns, &name, &patch)?;
        scaled_event(self.cluster, &self.deploy, &name, from, to);
        Ok(())
    }

    /// Kubernetes' `scaleReplicaSetAndRecordEvent`: only a change of size writes. Returns
    /// whether it did.
    fn scale(&mut self, i: usize, to: i32) -> Result<bool> {
        if spec_replicas(&self.rss[i]) == to {
            return Ok(false);
        }
        self.resize(i, to)?;
        Ok(true)
    }

    /// Kubernetes' `isScalingEvent`: an active ReplicaSet was last scaled for another
    /// `spec.replicas` than the Deployment's now.
    fn is_scaling_event(&self) -> bool {
        self.rss
            .iter()
            .filter(|rs| spec_replicas(rs) > 0)
            .any(|rs| {
                int_annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION)
                    .is_some_and(|d| d != self.desired)
            })
    }

    /// Kubernetes' `sync`, for paused Deployments and resizes: scale without rolling out,
    /// clean up history while paused, report status without judging progress.
    fn sync_scale(mut self) -> Result<Outcome> {
        self.sync_new_rs(false)?;
        self.scale_all()?;
        if self.spec.paused == Some(true) {
            self.cleanup()?;
        }
        let st = self.calculate_status();
        self.finish(st)?;
        Ok(Outcome::done())
    }

    /// Kubernetes' `scale`: a single active ReplicaSet (or, with none, the newest) takes the
    /// whole size; a saturated new one sends the old ones to 0; otherwise a RollingUpdate
    /// spreads the change proportionally.
    fn scale_all(&mut self) -> Result<()> {
        let active: Vec<usize> = (0..self.rss.len())
            .filter(|&i| spec_replicas(&self.rss[i]) > 0)
            .collect();
        let target = match active.as_slice() {
            [] => self.new.or_else(|| self.rss.len().checked_sub(1)),
            [one] => Some(*one),
            _ => None,
        };
        if let Some(i) = target {
            self.scale(i, self.desired)?;
            return Ok(());
        }
        if let Some(n) = self.new {
            let rs = &self.rss[n];
            let saturated = spec_replicas(rs) == self.desired
                && int_annotation(&rs.metadata, DESIRED_REPLICAS_ANNOTATION) == Some(self.desired)
                && size(rs).available == self.desired;
            if saturated {
                for i in self.old().collect::<Vec<_>>() {
                    self.scale(i, 0)?;
                }
                return Ok(());
            }
        }
        if self.strategy == Strategy::Recreate {
            return Ok(());
        }
        let total: i32 = active.iter().map(|&i| spec_replicas(&self.rss[i])).sum();
        let growing = self.desired + self.strategy.max_surge() > total;
        let mut order = active;
        // Largest first; on a tie the newer first when growing, the older when shrinking
        // (`rss` is oldest first).
        order.sort_by(|&a, &b| {
            let by_size = spec_replicas(&self.rss[b]).cmp(&spec_replicas(&self.rss[a]));
            by_size.then(if growing { b.cmp(&a) } else { a.cmp(&b) })
        });
        let sizes: Vec<(i32, Option<i32>)> = order
            .iter()
            .map(|&i| {
                let rs = &self.rss[i];
                (
                    spec_replicas(rs),
                    int_annotation(&rs.metadata, MAX_REPLICAS_ANNOTATION),
                )
            })
            .collect();
        let fallback = self.status.replicas.unwrap_or(0);
        let to = pacing::proportional(self.desired, self.strategy.max_surge(), &sizes, fallback);
        for (i, n) in order.into_iter().zip(to) {
            self.resize(i, n)?;
        }
        Ok(())
    }

    /// Kubernetes' `rolloutRolling`: grow the new ReplicaSet within the surge, else shrink old
    /// ones within the unavailability budget, else (rollout complete) prune history.
    fn rollout_rolling(mut self) -> Result<Outcome> {
        let was_complete = self.was_complete();
        self.sync_new_rs(true)?;
        if self.reconcile_new()? || self.reconcile_old()? {
            return self.sync_rollout_status(None);
        }
        if was_complete {
            self.cleanup()?;
        }
        self.sync_rollout_status(None)
    }

    fn was_complete(&self) -> bool {
        complete(self.desired, self.deploy.metadata.generation, &self.status)
    }

    /// Kubernetes' `reconcileNewReplicaSet`.
    fn reconcile_new(&mut self) -> Result<bool> {
        let Some(n) = self.new else {
            return Ok(false);
        };
        let current = spec_replicas(&self.rss[n]);
        if current >= self.desired {
            return self.scale(n, self.desired);
        }
        let all: i32 = self.rss.iter().map(spec_replicas).sum();
        let to = pacing::new_rs_replicas(self.desired, self.strategy.max_surge(), all, current);
        self.scale(n, to)
    }

    /// Kubernetes' `reconcileOldReplicaSets` over the active old ReplicaSets, oldest first.
    fn reconcile_old(&mut self) -> Result<bool> {
        let old: Vec<usize> = self
            .old()
            .filter(|&i| spec_replicas(&self.rss[i]) > 0)
            .collect();
        let sizes: Vec<Size> = old.iter().map(|&i| size(&self.rss[i])).collect();
        let new = self.new.map(|n| size(&self.rss[n])).unwrap_or_default();
        let to = pacing::scale_down_old(self.desired, self.strategy.max_unavailable(), &sizes, new);
        let mut scaled = false;
        for (i, n) in old.into_iter().zip(to) {
            scaled |= self.scale(i, n)?;
        }
        Ok(scaled)
    }

    /// Kubernetes' `rolloutRecreate`: old ReplicaSets to 0; once their pods are gone, the
    /// new one at full size.
    fn rollout_recreate(mut self) -> Result<Outcome> {
        let was_complete = self.was_complete();
        let mut scaled = false;
        for i in self.old().collect::<Vec<_>>() {
            if spec_replicas(&self.rss[i]) > 0 {
                scaled |= self.scale(i, 0)?;
            }
        }
        if scaled {
            return self.sync_rollout_status(None);
        }
        if self.old_pods_running()? {
            return self.sync_rollout_status(Some(OLD_PODS_POLL_MS));
        }
        self.sync_new_rs(true)?;
        if let Some(n) = self.new {
            self.scale(n, self.desired)?;
        }
        if was_complete {
            self.cleanup()?;
        }
        self.sync_rollout_status(None)
    }

    /// Kubernetes' `oldPodsRunning`: an old ReplicaSet still reports pods, or a pod it
    /// controls (terminating ones included) has not finished.
    fn old_pods_running(&self) -> Result<bool> {
        if self.old().any(|i| status_replicas(&self.rss[i]) > 0) {
            return Ok(true);
        }
        let old_uids: Vec<&str> = self
            .old()
            .filter_map(|i| self.rss[i].metadata.uid.as_deref())
            .collect();
        if old_uids.is_empty() {
            return Ok(false);
        }
        Ok(self.cluster.list::<Pod>(&self.ns, "")?.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            controller_of(&p.metadata).is_some_and(|r| old_uids.contains(&r.uid.as_str()))
                && !matches!(phase, Some("Succeeded" | "Failed"))
        }))
    }

    /// Kubernetes' `cleanupDeployment`: old ReplicaSets beyond `revisionHistoryLimit` go,
    /// lowest revision first, but only those fully scaled down and observed so.
    fn cleanup(&mut self) -> Result<()> {
        let limit = self
            .spec
            .revision_history_limit
            .unwrap_or(DEFAULT_HISTORY_LIMIT)
            .max(0);
        let mut cleanable: Vec<usize> = self
            .old()
            .filter(|&i| self.rss[i].metadata.deletion_timestamp.is_none())
            .collect();
        let excess = cleanable
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        if excess == 0 {
            return Ok(());
        }
        // `rss` is oldest first, so equal revisions keep creation order.
        cleanable.sort_by_key(|&i| revision(&self.rss[i].metadata));
        for &i in &cleanable[..excess] {
            let rs = &self.rss[i];
            let observed = rs
                .status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
            if status_replicas(rs) != 0
                || spec_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > observed
            {
                continue;
            }
            let name = self.rs_name(i);
            self.cluster
                .delete::<ReplicaSet>(&self.ns, &name)
                .ignore_not_found()?;
            self.cluster.log(
                LogLevel::Info,
                &format!(
                    "deleted old replicaset {}/{name} (revision history limit)",
                    self.ns
                ),
            );
        }
        Ok(())
    }

    /// Kubernetes' `calculateStatus`: counts over every ReplicaSet, the Available condition
    /// against `replicas - maxUnavailable`.
    fn calculate_status(&self) -> DeploymentStatus {
        let sum = |f: &dyn Fn(&ReplicaSet) -> i32| self.rss.iter().map(f).sum::<i32>();
        let available = sum(&|rs| size(rs).available);
        let total = sum(&spec_replicas);
        let mut st = DeploymentStatus {
            observed_generation: self.deploy.metadata.generation,
            replicas: Some(sum(&status_replicas)),
            updated_replicas: Some(self.new.map_or(0, |n| status_replicas(&self.rss[n]))),
            ready_replicas: Some(sum(&|rs| {
                rs.status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
            })),
            available_replicas: Some(available),
            unavailable_replicas: Some((total - available).max(0)),
            conditions: self.status.conditions.clone(),
            collision_count: self.status.collision_count,
            terminating_replicas: self.status.terminating_replicas,
        };
        let c = if available >= self.desired - self.strategy.max_unavailable() {
            self.condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            self.condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        set_condition(st.conditions.get_or_insert_default(), c);
        st
    }

    /// Kubernetes' `syncRolloutStatus`: the status, the Progressing condition judged against
    /// the last status, and a requeue at the progress deadline (no event would tell when it
    /// passes). `poll_ms` asks to look again sooner.
    fn sync_rollout_status(self, poll_ms: Option<u64>) -> Result<Outcome> {
        let mut st = self.calculate_status();
        let new_name = self.new.map(|n| self.rs_name(n));
        let subject = match &new_name {
            Some(n) => format!("ReplicaSet {n:?}"),
            None => format!("Deployment {:?}", self.name()),
        };
        let current = progressing(&self.status).cloned();
        let finished = st.replicas == st.updated_replicas
            && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
        let conditions = st.conditions.get_or_insert_default();
        match self.deadline_secs {
            None => conditions.retain(|c| c.type_ != "Progressing"),
            Some(_) if finished => {}
            Some(deadline) => {
                if complete(self.desired, self.deploy.metadata.generation, &st) {
                    let msg = format!("{subject} has successfully progressed.");
                    let c = self.condition("Progressing", "True", NEW_RS_AVAILABLE, msg);
                    set_condition(st.conditions.get_or_insert_default(), c);
                } else if made_progress(&self.status, &st) {
                    let msg = format!("{subject} is progressing.");
                    let mut c = self.condition("Progressing", "True", RS_UPDATED, msg);
                    // Progress refreshes lastUpdateTime even with an unchanged reason.
                    if let Some(cur) = current.as_ref().filter(|c| c.status == "True") {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    let conditions = st.conditions.get_or_insert_default();
                    conditions.retain(|c| c.type_ != "Progressing");
                    conditions.push(c);
                } else if self.timed_out(&st, deadline) {
                    let msg = format!("{subject} has timed out progressing.");
                    let c = self.condition("Progressing", "False", TIMED_OUT, msg);
                    set_condition(st.conditions.get_or_insert_default(), c);
                }
            }
        }
        let requeue = self.deadline_requeue(&st);
        self.finish(st)?;
        Ok(match (requeue, poll_ms) {
            (Some(a), Some(b)) => Outcome::requeue_after_ms(a.min(b)),
            (Some(a), None) | (None, Some(a)) => Outcome::requeue_after_ms(a),
            (None, None) => Outcome::done(),
        })
    }

    /// Kubernetes' `DeploymentTimedOut`: no progress recorded for longer than the deadline.
    fn timed_out(&self, st: &DeploymentStatus, deadline: i32) -> bool {
        let Some(c) = progressing(st) else {
            return false;
        };
        match c.reason.as_deref() {
            Some(NEW_RS_AVAILABLE) => false,
            Some(TIMED_OUT) => true,
            _ => match (&c.last_update_time, &self.now) {
                (Some(from), Some(now)) => millis(from) + i64::from(deadline) * 1000 < millis(now),
                _ => false,
            },
        }
    }

    /// Kubernetes' `requeueStuckDeployment`: while a rollout is unfinished and not yet timed
    /// out, look again just after the deadline would pass without progress.
    fn deadline_requeue(&self, st: &DeploymentStatus) -> Option<u64> {
        let deadline = self.deadline_secs?;
        let c = progressing(st)?;
        if complete(self.desired, self.deploy.metadata.generation, st)
            || c.reason.as_deref() == Some(TIMED_OUT)
        {
            return None;
        }
        let from = millis(c.last_update_time.as_ref()?);
        let now = millis(self.now.as_ref()?);
        // One second past the deadline: the check is "strictly after".
        let due = from + i64::from(deadline) * 1000 + 1000 - now;
        Some(u64::try_from(due).unwrap_or(0))
    }

    /// Writes the Deployment's revision (its new ReplicaSet's) and then the status, each only
    /// when changed.
    fn finish(mut self, st: DeploymentStatus) -> Result<()> {
        let rev = self
            .new
            .and_then(|n| annotation(&self.rss[n].metadata, REVISION_ANNOTATION))
            .map(str::to_owned);
        if let Some(rev) = rev
            && annotation(&self.deploy.metadata, REVISION_ANNOTATION) != Some(rev.as_str())
        {
            self.deploy
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(REVISION_ANNOTATION.into(), rev);
            match self.cluster.update(&self.ns, &self.deploy).ignore_stale()? {
                Some(d) => self.deploy = d,
                // Changed meanwhile: that change enqueues the Deployment again.
                None => return Ok(()),
            }
        }
        self.cluster
            .update_status_if_changed(&self.ns, &self.deploy, st)?;
        Ok(())
    }
}

/// A Deployment the API server should not have admitted: say so once, do not retry.
fn invalid(cluster: &dyn Cluster, key: &ObjectKey, why: &str) -> Result<Outcome> {
    cluster.log(
        LogLevel::Warn,
        &format!("deployment {}/{}: {why}; ignoring", key.namespace, key.name),
    );
    Ok(Outcome::done())
}

#[cfg(test)]
mod tests;
