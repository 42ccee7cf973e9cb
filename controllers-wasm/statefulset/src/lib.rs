//! The StatefulSet controller as a kedge plugin: pods with stable names `<sts>-<ordinal>`,
//! created in order (`OrderedReady`) or all at once (`Parallel`), removed from the highest
//! ordinal down, updated highest ordinal first while honouring `partition` (`RollingUpdate`)
//! or only when the user deletes them (`OnDelete`). Every template version is recorded as a
//! ControllerRevision `<sts>-<hash>`, the way Kubernetes stores it, so a rollback finds it.
//!
//! `volumeClaimTemplates`: before an ordinal's pod is created, each template gets its
//! PersistentVolumeClaim `<template>-<sts>-<ordinal>` ([`claim_name`]) if it is missing: the
//! template's spec (the API fills in the default StorageClass when it names none), its labels
//! plus the selector's `matchLabels`, and no owner reference, so claims outlive scale-down and
//! the StatefulSet itself (the retention policy Retain) and a re-created ordinal finds its data
//! again. The pod mounts each claim as a volume named after its template (replacing a template
//! volume of that name); where the pod runs is the scheduler's business, led by the bound
//! volume's node affinity. A claim still being deleted holds its pod back (as in Kubernetes):
//! claims do not enqueue the StatefulSet, so the reconcile polls until it is gone. A Pending pod
//! whose claim has disappeared gets it back.
//!
//! `minReadySeconds`: a pod is available once it is Running and has been Ready for that long
//! (its Ready condition's `lastTransitionTime` plus `minReadySeconds` is not after now);
//! `status.availableReplicas` counts those. As in Kubernetes, `OrderedReady` waits for each
//! ordinal to be available (not only ready) before creating the next one or scaling down, and
//! a rolling update counts a pod that is not yet available against `maxUnavailable` (below).
//! No event announces that moment, so the reconcile asks to run again when the
//! earliest ready pod becomes available. The rollout counts as complete (current revision :=
//! update revision) once every pod is ready, as Kubernetes still does.
//!
//! `rollingUpdate.maxUnavailable` (Kubernetes' MaxUnavailableStatefulSet, [`max_unavailable`]):
//! how many of the ordinals below `replicas` may be unavailable (missing, terminating, or not
//! Running and available as above) while a rolling update replaces pods; 1 without the field.
//! Each pass counts the unavailable ordinals, those below the partition included, and deletes
//! up to the difference from the highest ordinal down to the partition, skipping pods already
//! on the update revision; the deleted ones come back on it. With `OrderedReady` the deletions
//! still happen together, but their pods come back one ordinal at a time, each available
//! before the next, as in Kubernetes. An old pod that never becomes available counts too, so
//! (as in Kubernetes) rolling away from a broken template may need such pods deleted by hand.
//!
//! Not implemented: `spec.ordinals.start`, the PVC retention policy `Delete` (the API refuses
//! it), resizing existing claims when a template changes, release of owned pods whose labels
//! stopped matching the selector.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    Event, PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_guest::meta::{controller_of, labels_of, new_controller_ref, parse_time};
use kedge_guest::pod::{available_at, fnv1a32, is_ready, safe_encode};
use kedge_guest::selector::Selector;
use kedge_guest::{
    ApiError, ApiResultExt, Cluster, ClusterExt, Controller, KindRef, LogLevel, ObjectKey, Outcome,
    Registration, Result,
};
use serde_json::{Value, json};

/// The Events' source, as Kubernetes' controller names it.
const COMPONENT: &str = "statefulset-controller";

/// Label naming the pod itself, so a Service can select exactly one ordinal.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label carrying the ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label carrying the name of the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// How soon to look again at a claim that is being deleted: claims carry no owner reference,
/// so their events do not bring the StatefulSet back.
const CLAIM_POLL_MS: u64 = 2000;

/// The plugin type wired to the component exports.
pub struct StatefulSetController;

impl Controller for StatefulSetController {
    fn registration() -> Registration {
        Registration::new("statefulset", KindRef::of::<StatefulSet>())
            .owns([KindRef::of::<Pod>()])
            .writes([
                KindRef::of::<Pod>(),
                KindRef::of::<StatefulSet>(),
                KindRef::of::<ControllerRevision>(),
                KindRef::of::<PersistentVolumeClaim>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }
}

kedge_guest::export_controller!(StatefulSetController);

/// The ordinal in a pod name `<sts>-<ordinal>`; `None` for any other name (`web-01`
/// included: no StatefulSet makes it).
///
/// ```
/// use kedge_plugin_statefulset::ordinal_of;
/// assert_eq!(ordinal_of("web", "web-12"), Some(12));
/// assert_eq!(ordinal_of("web", "web-01"), None);
/// assert_eq!(ordinal_of("web", "webby-1"), None);
/// ```
pub fn ordinal_of(sts: &str, pod: &str) -> Option<i32> {
    let n = pod.strip_prefix(sts)?.strip_prefix('-')?;
    let o: i32 = n.parse().ok()?;
    (o >= 0 && o.to_string() == n).then_some(o)
}

/// `rollingUpdate.maxUnavailable` as a pod count for `replicas` replicas: 1 when absent, a
/// percentage rounded down (Kubernetes' `getStatefulSetMaxUnavailable`; its API reference
/// says "rounding up", its controller does not), and never below 1 so an update always moves.
/// The API admits only a positive integer or a percentage in (0%, 100%]; anything else stored
/// counts as 1.
///
/// ```
/// use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
/// use kedge_plugin_statefulset::max_unavailable;
/// assert_eq!(max_unavailable(Some(&IntOrString::String("40%".into())), 5), 2);
/// assert_eq!(max_unavailable(Some(&IntOrString::String("10%".into())), 5), 1);
/// assert_eq!(max_unavailable(None, 5), 1);
/// ```
pub fn max_unavailable(value: Option<&IntOrString>, replicas: i32) -> i32 {
    let n = match value {
        None => 1,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<i64>().ok())
            .map_or(1, |pct| {
                i32::try_from(pct * i64::from(replicas.max(0)) / 100).unwrap_or(i32::MAX)
            }),
    };
    n.max(1)
}

/// The PersistentVolumeClaim of template `template` for ordinal `ordinal`, as Kubernetes
/// names it.
///
/// ```
/// assert_eq!(kedge_plugin_statefulset::claim_name("www", "web", 2), "www-web-2");
/// ```
pub fn claim_name(template: &str, sts: &str, ordinal: i32) -> String {
    format!("{template}-{sts}-{ordinal}")
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn finished(p: &Pod) -> bool {
    matches!(phase(p), "Failed" | "Succeeded")
}

/// Running, Ready and not going away.
fn healthy(p: &Pod) -> bool {
    !terminating(p) && phase(p) == "Running" && is_ready(p)
}

/// Running and Ready, as `status.readyReplicas` counts (terminating pods included).
fn running_and_ready(p: &Pod) -> bool {
    phase(p) == "Running" && is_ready(p)
}

/// When pods become available: `spec.minReadySeconds` and the reconcile's clock.
#[derive(Debug, Clone, Copy)]
struct Availability {
    min_ready_seconds: i32,
    /// Epoch milliseconds.
    now_ms: i64,
}

impl Availability {
    /// When `p` becomes available (epoch ms); `None` if it is not running and ready, or never
    /// will be on its current Ready condition.
    fn due(&self, p: &Pod) -> Option<i64> {
        if !running_and_ready(p) {
            return None;
        }
        available_at(p, self.min_ready_seconds)
    }

    /// Running, Ready for `minReadySeconds` (Kubernetes' `isRunningAndAvailable`).
    fn available(&self, p: &Pod) -> bool {
        self.due(p).is_some_and(|t| t <= self.now_ms)
    }

    /// Healthy and available: what `OrderedReady` and a rolling update wait for.
    fn settled(&self, p: &Pod) -> bool {
        healthy(p) && self.available(p)
    }

    /// Milliseconds until the earliest ready pod still inside its `minReadySeconds` becomes
    /// available.
    fn next_due_ms<'p>(&self, pods: impl IntoIterator<Item = &'p Pod>) -> Option<u64> {
        pods.into_iter()
            .filter_map(|p| self.due(p))
            .filter(|&t| t > self.now_ms)
            .min()
            .map(|t| u64::try_from(t - self.now_ms).unwrap_or(0))
    }
}

fn revision_of(p: &Pod) -> Option<&str> {
    labels_of(&p.metadata)
        .get(REVISION_LABEL)
        .map(String::as_str)
}

/// One template version: the ControllerRevision that records it.
#[derive(Debug, Clone)]
struct Revision {
    name: String,
    template: PodTemplateSpec,
}

/// `data` as Kubernetes stores it for a StatefulSet: a strategic-merge patch replacing the
/// template.
fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).expect("k8s-openapi types always serialize");
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

fn template_of(cr: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = cr.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// Names a template version: FNV-1a 32 over its JSON, plus the collision count once a
/// name clash forced one (Kubernetes' `collisionCount`), in the safe alphabet.
///
/// ```
/// use k8s_openapi::api::core::v1::PodTemplateSpec;
/// use kedge_plugin_statefulset::revision_hash;
/// let t = PodTemplateSpec::default();
/// assert_eq!(revision_hash(&t, 0), revision_hash(&t, 0));
/// assert_ne!(revision_hash(&t, 0), revision_hash(&t, 1));
/// ```
pub fn revision_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    let mut bytes = serde_json::to_vec(template).expect("k8s-openapi types always serialize");
    if collision_count > 0 {
        bytes.extend_from_slice(&collision_count.to_le_bytes());
    }
    safe_encode(fnv1a32(&bytes))
}

/// What one reconcile works with.
struct Ctx<'a> {
    cluster: &'a dyn Cluster,
    sts: &'a StatefulSet,
    ns: &'a str,
    name: &'a str,
    /// `spec.volumeClaimTemplates`.
    templates: Vec<PersistentVolumeClaim>,
    /// The namespace's claims by name, as this reconcile has seen or made them; empty (and
    /// never listed) without templates.
    claims: BTreeMap<String, PersistentVolumeClaim>,
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let name = key.name.as_str();
    let Some(sts) = cluster.get::<StatefulSet>(ns, name)? else {
        return Ok(Outcome::done());
    };
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Outcome::done());
    }
    let Some(spec) = sts.spec.clone() else {
        return Ok(Outcome::done());
    };
    let selector = match Selector::from_label_selector(&spec.selector) {
        // An empty selector would claim every pod in the namespace; the API server forbids it.
        Ok(s) if !s.requirements().is_empty() => s,
        Ok(_) => return invalid(cluster, key, "empty selector"),
        Err(e) => return invalid(cluster, key, &e.to_string()),
    };
    let uid = sts.metadata.uid.clone().unwrap_or_default();

    let mut pods: BTreeMap<i32, Pod> = BTreeMap::new();
    for pod in cluster.list::<Pod>(ns, "")? {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let Some(ord) = ordinal_of(name, &pod_name) else {
            continue;
        };
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                pods.insert(ord, pod);
            }
            None if selector.matches(labels_of(&pod.metadata)) && !terminating(&pod) => {
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(new_controller_ref(&sts));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                if let Some(p) = cluster
                    .patch_merge::<Pod>(ns, &pod_name, &patch)
                    .ignore_stale()?
                {
                    pods.insert(ord, p);
                }
            }
            _ => {}
        }
    }

    let templates = spec.volume_claim_templates.clone().unwrap_or_default();
    let claims = if templates.is_empty() {
        BTreeMap::new()
    } else {
        cluster
            .list::<PersistentVolumeClaim>(ns, "")?
            .into_iter()
            .filter_map(|c| Some((c.metadata.name.clone()?, c)))
            .collect()
    };

    let (update, current, collision_count) = sync_revisions(cluster, &sts, &pods)?;

    let mut ctx = Ctx {
        cluster,
        sts: &sts,
        ns,
        name,
        templates,
        claims,
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let rolling = strategy.rolling_update.filter(|_| !on_delete);
    let partition = rolling
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);
    let plan = Plan {
        replicas,
        ordered: spec.pod_management_policy.as_deref() != Some("Parallel"),
        partition,
        on_delete,
        max_unavailable: max_unavailable(
            rolling.as_ref().and_then(|r| r.max_unavailable.as_ref()),
            replicas,
        ),
        availability: Availability {
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            // An unreadable clock would stall every wait: treat everything ready as due.
            now_ms: parse_time(&cluster.now()).map_or(i64::MAX, |t| t.0.as_millisecond()),
        },
    };
    let claim_wait = manage(&mut ctx, &mut pods, &plan, &update, &current)?;

    // Status, from the pods as this reconcile left them (deleted ones count as terminating).
    let mut status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        collision_count: Some(collision_count),
        update_revision: Some(update.name.clone()),
        current_revision: Some(current.name.clone()),
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut ready, mut available, mut cur, mut upd) = (0, 0, 0, 0);
    for p in pods.values() {
        status.replicas += 1;
        if running_and_ready(p) {
            ready += 1;
        }
        if plan.availability.available(p) {
            available += 1;
        }
        if !terminating(p) {
            if revision_of(p) == Some(current.name.as_str()) {
                cur += 1;
            }
            if revision_of(p) == Some(update.name.as_str()) {
                upd += 1;
            }
        }
    }
    // The rollout is complete: the update revision becomes the current one. Kubernetes asks
    // only for readiness here, not availability (kubernetes/kubernetes#136831).
    if upd == replicas && ready == replicas && status.replicas == replicas {
        status.current_revision = Some(update.name.clone());
        cur = upd;
    }
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.current_replicas = Some(cur);
    status.updated_replicas = Some(upd);
    cluster.update_status_if_changed(ns, &sts, status)?;
    // Both `availableReplicas` and any wait in `manage` change when a ready pod's
    // minReadySeconds run out; no event says so.
    let next = plan.availability.next_due_ms(pods.values());
    Ok(match next.into_iter().chain(claim_wait).min() {
        Some(ms) => Outcome::requeue_after_ms(ms),
        None => Outcome::done(),
    })
}

/// How pods are managed, from the spec (and the clock, for `minReadySeconds`).
struct Plan {
    replicas: i32,
    /// `OrderedReady`: one ordinal at a time, each Running and available before the next.
    ordered: bool,
    /// Ordinals below it keep the current revision.
    partition: i32,
    on_delete: bool,
    /// How many ordinals below `replicas` a rolling update may leave unavailable (at least 1).
    max_unavailable: i32,
    availability: Availability,
}

/// One pass of Kubernetes' StatefulSet algorithm; returning early means "wait for the pods
/// to change" (their events bring the StatefulSet back) or for a ready pod to become
/// available (the caller requeues for that). Returns how soon to look again at a claim that
/// held a pod back while being deleted.
fn manage(
    ctx: &mut Ctx,
    pods: &mut BTreeMap<i32, Pod>,
    plan: &Plan,
    update: &Revision,
    current: &Revision,
) -> Result<Option<u64>> {
    let settled = |p: &Pod| plan.availability.settled(p);
    let mut claim_wait = None;
    // 1. Every ordinal below `replicas` gets a pod; failed ones are replaced under the same
    //    name. OrderedReady waits for each to be Running, Ready and available before the next.
    for ord in 0..plan.replicas {
        // As Kubernetes does, a pod still waiting to start gets back a claim it lost.
        if let Some(p) = pods.get(&ord)
            && phase(p) == "Pending"
            && !terminating(p)
        {
            ensure_claims(ctx, ord)?;
        }
        match pods.get(&ord) {
            None => {
                let rev = if !plan.on_delete && ord < plan.partition {
                    current
                } else {
                    update
                };
                match create_pod(ctx, ord, rev)? {
                    Created::Pod(p) => _ = pods.insert(ord, *p),
                    // Our view lags behind the API: wait for the pod's event.
                    Created::Exists => return Ok(claim_wait),
                    Created::ClaimDeleting => {
                        claim_wait = Some(CLAIM_POLL_MS);
                        if plan.ordered {
                            return Ok(claim_wait);
                        }
                        continue;
                    }
                }
                if plan.ordered {
                    return Ok(claim_wait);
                }
            }
            Some(p) if finished(p) && !terminating(p) => {
                delete_pod(ctx, pods, ord)?;
                if plan.ordered {
                    return Ok(claim_wait);
                }
            }
            Some(p) if plan.ordered && !settled(p) => return Ok(claim_wait),
            Some(_) => {}
        }
    }

    // 2. Scale down, highest ordinal first; OrderedReady removes one at a time and only
    //    while every other pod is healthy; a healthy condemned pod is first left to become
    //    available, as Kubernetes does.
    let condemned: Vec<i32> = pods.range(plan.replicas..).map(|(o, _)| *o).rev().collect();
    for ord in condemned {
        if terminating(&pods[&ord]) {
            if plan.ordered {
                return Ok(claim_wait);
            }
            continue;
        }
        if plan.ordered && pods.iter().any(|(o, p)| *o != ord && !healthy(p)) {
            return Ok(claim_wait);
        }
        if plan.ordered && healthy(&pods[&ord]) && !settled(&pods[&ord]) {
            return Ok(claim_wait);
        }
        delete_pod(ctx, pods, ord)?;
        if plan.ordered {
            return Ok(claim_wait);
        }
    }

    // 3. RollingUpdate: highest ordinal first down to the partition, as many pods at once as
    //    keep the unavailable ordinals (all of them, below the partition too) within
    //    maxUnavailable; the deleted ones come back on the update revision in step 1.
    if plan.on_delete {
        return Ok(claim_wait);
    }
    let unavailable = (0..plan.replicas)
        .filter(|o| pods.get(o).is_none_or(|p| !settled(p)))
        .count();
    let budget = usize::try_from(plan.max_unavailable)
        .unwrap_or(1)
        .saturating_sub(unavailable);
    let outdated: Vec<i32> = (plan.partition..plan.replicas)
        .rev()
        .filter(|o| {
            pods.get(o)
                .is_some_and(|p| revision_of(p) != Some(update.name.as_str()) && !terminating(p))
        })
        .take(budget)
        .collect();
    for ord in outdated {
        delete_pod(ctx, pods, ord)?;
    }
    Ok(claim_wait)
}

/// Pod `ordinal` of the StatefulSet at `revision`.
fn new_pod(ctx: &Ctx, ordinal: i32, revision: &Revision) -> Pod {
    let name = format!("{}-{ordinal}", ctx.name);
    let tmeta = revision.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(REVISION_LABEL.into(), revision.name.clone());
    let mut spec = revision.template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = ctx
        .sts
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty());
    if !ctx.templates.is_empty() {
        let volumes = spec.volumes.get_or_insert_default();
        for template in ctx
            .templates
            .iter()
            .filter_map(|t| t.metadata.name.as_ref())
        {
            // As in Kubernetes, the claim wins over a template volume of the same name.
            volumes.retain(|v| &v.name != template);
            volumes.push(Volume {
                name: template.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(template, ctx.name, ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ctx.ns.to_owned()),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![new_controller_ref(ctx.sts)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Claim `template` of ordinal `ordinal`: the template's spec, labels and annotations, the
/// selector's `matchLabels` among the labels (Kubernetes' `getPersistentVolumeClaims`), and
/// no owner: claims are retained.
fn new_claim(ctx: &Ctx, template: &PersistentVolumeClaim, ordinal: i32) -> PersistentVolumeClaim {
    let tname = template.metadata.name.as_deref().unwrap_or_default();
    let mut labels = template.metadata.labels.clone().unwrap_or_default();
    if let Some(match_labels) = ctx
        .sts
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
    {
        labels.extend(match_labels.clone());
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(tname, ctx.name, ordinal)),
            namespace: Some(ctx.ns.to_owned()),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: template.metadata.annotations.clone(),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Whether an ordinal's claims let its pod be created.
#[derive(Debug, PartialEq)]
enum Claims {
    Ready,
    /// This claim exists but is being deleted: the pod would lose it.
    Deleting(String),
}

/// Creates the claims of ordinal `ordinal` that do not exist yet.
fn ensure_claims(ctx: &mut Ctx, ordinal: i32) -> Result<Claims> {
    let pod_name = format!("{}-{ordinal}", ctx.name);
    let mut state = Claims::Ready;
    for template in &ctx.templates {
        let claim = new_claim(ctx, template, ordinal);
        let cname = claim.metadata.name.clone().unwrap_or_default();
        let existing = match ctx.claims.get(&cname) {
            Some(c) => Some(c.clone()),
            None => match ctx.cluster.create(ctx.ns, &claim) {
                Ok(made) => {
                    let _ = ctx.cluster.record_event(
                        ctx.sts,
                        "Normal",
                        "SuccessfulCreate",
                        &format!(
                            "create Claim {cname} Pod {pod_name} in StatefulSet {} success",
                            ctx.name
                        ),
                        COMPONENT,
                    );
                    Some(made)
                }
                // Made since our list: look at it, it may be going away.
                Err(ApiError::AlreadyExists(_)) => {
                    ctx.cluster.get::<PersistentVolumeClaim>(ctx.ns, &cname)?
                }
                Err(e) => {
                    let _ = ctx.cluster.record_event(
                        ctx.sts,
                        "Warning",
                        "FailedCreate",
                        &format!(
                            "create Claim {cname} for Pod {pod_name} in StatefulSet {} failed error: {e}",
                            ctx.name
                        ),
                        COMPONENT,
                    );
                    return Err(e.into());
                }
            },
        };
        let Some(existing) = existing else {
            // Gone again between the conflict and the read: the next reconcile retries.
            state = Claims::Deleting(cname);
            continue;
        };
        if existing.metadata.deletion_timestamp.is_some() && state == Claims::Ready {
            state = Claims::Deleting(cname.clone());
        }
        ctx.claims.insert(cname, existing);
    }
    Ok(state)
}

/// What [`create_pod`] did.
enum Created {
    Pod(Box<Pod>),
    /// A pod of that name already exists: our view lags.
    Exists,
    /// A claim the pod needs is being deleted: the pod waits for it to go.
    ClaimDeleting,
}

/// Creates pod `ordinal`, after the claims it mounts.
fn create_pod(ctx: &mut Ctx, ordinal: i32, revision: &Revision) -> Result<Created> {
    let pod_name = format!("{}-{ordinal}", ctx.name);
    if let Claims::Deleting(claim) = ensure_claims(ctx, ordinal)? {
        ctx.cluster.log(
            LogLevel::Debug,
            &format!(
                "pod {}/{pod_name} waits: claim {claim} is being deleted",
                ctx.ns
            ),
        );
        return Ok(Created::ClaimDeleting);
    }
    let pod = new_pod(ctx, ordinal, revision);
    match ctx.cluster.create(ctx.ns, &pod) {
        Ok(p) => {
            let _ = ctx.cluster.record_event(
                ctx.sts,
                "Normal",
                "SuccessfulCreate",
                &format!(
                    "create Pod {pod_name} in StatefulSet {} successful",
                    ctx.name
                ),
                COMPONENT,
            );
            Ok(Created::Pod(Box::new(p)))
        }
        Err(ApiError::AlreadyExists(_)) => {
            ctx.cluster.log(
                LogLevel::Debug,
                &format!(
                    "pod {}/{pod_name} exists but is not in our view yet",
                    ctx.ns
                ),
            );
            Ok(Created::Exists)
        }
        Err(e) => {
            let _ = ctx.cluster.record_event(
                ctx.sts,
                "Warning",
                "FailedCreate",
                &format!(
                    "create Pod {pod_name} in StatefulSet {} failed error: {e}",
                    ctx.name
                ),
                COMPONENT,
            );
            Err(e.into())
        }
    }
}

/// Deletes pod `ordinal`; in `pods` it stays, as terminating, like the API shows it until
/// the node confirms.
fn delete_pod(ctx: &Ctx, pods: &mut BTreeMap<i32, Pod>, ordinal: i32) -> Result<()> {
    let pod_name = format!("{}-{ordinal}", ctx.name);
    if ctx
        .cluster
        .delete::<Pod>(ctx.ns, &pod_name)
        .ignore_not_found()?
        .is_some()
    {
        let _ = ctx.cluster.record_event(
            ctx.sts,
            "Normal",
            "SuccessfulDelete",
            &format!(
                "delete Pod {pod_name} in StatefulSet {} successful",
                ctx.name
            ),
            COMPONENT,
        );
    }
    if let Some(p) = pods.get_mut(&ordinal) {
        p.metadata.deletion_timestamp = parse_time(&ctx.cluster.now());
    }
    Ok(())
}

/// Finds or creates the ControllerRevision of the current template (the update revision),
/// resolves the current revision, and trims history to `revisionHistoryLimit`. Returns
/// (update, current, collisionCount).
fn sync_revisions(
    cluster: &dyn Cluster,
    sts: &StatefulSet,
    pods: &BTreeMap<i32, Pod>,
) -> Result<(Revision, Revision, i32)> {
    let ns = sts.metadata.namespace.as_deref().unwrap_or("default");
    let name = sts.metadata.name.as_deref().unwrap_or("");
    let uid = sts.metadata.uid.as_deref().unwrap_or("");
    let spec = sts.spec.as_ref().expect("caller checked spec");
    let template = &spec.template;
    let mut revs: Vec<ControllerRevision> = cluster
        .list::<ControllerRevision>(ns, "")?
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|c| c.uid == uid))
        .collect();
    revs.sort_by_key(|r| r.revision);
    let mut collision = sts
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let max = revs.last().map_or(0, |r| r.revision);

    let update_name = match revs
        .iter()
        .position(|r| template_of(r).as_ref() == Some(template))
    {
        Some(i) => {
            let rname = revs[i].metadata.name.clone().unwrap_or_default();
            if revs[i].revision != max {
                // Back to an older template (a rollback): it becomes the newest revision.
                revs[i] = cluster.patch_merge::<ControllerRevision>(
                    ns,
                    &rname,
                    &json!({"revision": max + 1}),
                )?;
            }
            rname
        }
        None => loop {
            let rname = format!("{name}-{}", revision_hash(template, collision));
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_LABEL.into(), rname.clone());
            let cr = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(rname.clone()),
                    namespace: Some(ns.to_owned()),
                    labels: Some(labels),
                    owner_references: Some(vec![new_controller_ref(sts)]),
                    ..Default::default()
                },
                data: Some(RawExtension(revision_data(template))),
                revision: max + 1,
            };
            match cluster.create(ns, &cr) {
                Ok(made) => {
                    revs.push(made);
                    break rname;
                }
                Err(ApiError::AlreadyExists(_)) => {
                    let existing =
                        cluster
                            .get::<ControllerRevision>(ns, &rname)?
                            .ok_or_else(|| {
                                format!("controllerrevision {rname} exists but is not readable yet")
                            })?;
                    let ours = controller_of(&existing.metadata).is_some_and(|c| c.uid == uid);
                    if ours && template_of(&existing).as_ref() == Some(template) {
                        // Made by an earlier reconcile our list had not seen yet.
                        revs.push(existing);
                        break rname;
                    }
                    // Another template already has this name: Kubernetes' collisionCount.
                    collision += 1;
                    if collision > 1000 {
                        return Err(format!("too many revision name collisions for {name}").into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        },
    };
    let update = Revision {
        name: update_name.clone(),
        template: template.clone(),
    };
    let current = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .and_then(|c| revs.iter().find(|r| r.metadata.name.as_deref() == Some(c)))
        .and_then(|r| {
            Some(Revision {
                name: r.metadata.name.clone()?,
                template: template_of(r)?,
            })
        })
        .unwrap_or_else(|| update.clone());

    // History: keep what pods, current and update use, plus the newest others up to the limit.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
    let live = |n: &str| {
        n == update.name || n == current.name || pods.values().any(|p| revision_of(p) == Some(n))
    };
    let old: Vec<&ControllerRevision> = revs
        .iter()
        .filter(|r| !live(r.metadata.name.as_deref().unwrap_or("")))
        .collect();
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        let rname = r.metadata.name.as_deref().unwrap_or("");
        cluster
            .delete::<ControllerRevision>(ns, rname)
            .ignore_not_found()?;
    }
    Ok((update, current, collision))
}

/// A StatefulSet the API server should not have admitted: say so once, do not retry.
fn invalid(cluster: &dyn Cluster, key: &ObjectKey, why: &str) -> Result<Outcome> {
    cluster.log(
        LogLevel::Warn,
        &format!(
            "statefulset {}/{}: {why}; ignoring",
            key.namespace, key.name
        ),
    );
    Ok(Outcome::done())
}

#[cfg(test)]
mod tests;
