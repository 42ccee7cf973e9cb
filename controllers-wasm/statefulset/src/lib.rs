//! The StatefulSet controller as a kedge plugin: pods with stable names `<sts>-<ordinal>`,
//! created in order (`OrderedReady`) or all at once (`Parallel`), removed from the highest
//! ordinal down, updated highest ordinal first while honouring `partition` (`RollingUpdate`)
//! or only when the user deletes them (`OnDelete`). Every template version is recorded as a
//! ControllerRevision `<sts>-<hash>`, the way Kubernetes stores it, so a rollback finds it.
//!
//! `volumeClaimTemplates`: kedge serves no PersistentVolumeClaims yet, so each claim becomes a
//! node-local `hostPath` directory (type `DirectoryOrCreate`, made by the agent) at
//! `/var/lib/kedge/volumes/<namespace>/<claim>-<sts>-<ordinal>` — the name a PVC would have.
//! The node an ordinal first ran on is recorded in the StatefulSet annotation
//! [`VOLUME_NODES_ANNOTATION`], and every later pod of that ordinal is bound straight to it
//! (`spec.nodeName`), so its data follows it across deletion and scale-down (the directory is
//! never removed: the retention policy is always Retain). A node that is gone for good leaves
//! its ordinal Pending, as a local PersistentVolume would.
//!
//! `minReadySeconds`: a pod is available once it is Running and has been Ready for that long
//! (its Ready condition's `lastTransitionTime` plus `minReadySeconds` is not after now);
//! `status.availableReplicas` counts those. As in Kubernetes, `OrderedReady` waits for each
//! ordinal to be available (not only ready) before creating the next one or scaling down, and
//! a rolling update waits for the updated pod to be available before replacing the next
//! ordinal. No event announces that moment, so the reconcile asks to run again when the
//! earliest ready pod becomes available. The rollout counts as complete (current revision :=
//! update revision) once every pod is ready, as Kubernetes still does.
//!
//! Not implemented: `rollingUpdate.maxUnavailable` (updates go one pod at a time),
//! `spec.ordinals.start`, the PVC retention policy `Delete`, release of owned pods whose labels
//! stopped matching the selector.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Event, HostPathVolumeSource, Pod, PodTemplateSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
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
/// StatefulSet annotation: JSON object ordinal → node holding that ordinal's volumes.
pub const VOLUME_NODES_ANNOTATION: &str = "statefulset.kedge.io/volume-nodes";
/// Where the node-local stand-ins for PersistentVolumeClaims live on a node.
pub const VOLUME_ROOT: &str = "/var/lib/kedge/volumes";

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

/// The node directory standing in for claim `claim` of ordinal `ordinal`.
///
/// ```
/// assert_eq!(
///     kedge_plugin_statefulset::volume_path("default", "data", "web", 2),
///     "/var/lib/kedge/volumes/default/data-web-2"
/// );
/// ```
pub fn volume_path(namespace: &str, claim: &str, sts: &str, ordinal: i32) -> String {
    format!("{VOLUME_ROOT}/{namespace}/{claim}-{sts}-{ordinal}")
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
    claims: Vec<String>,
    nodes: BTreeMap<String, String>,
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let name = key.name.as_str();
    let Some(mut sts) = cluster.get::<StatefulSet>(ns, name)? else {
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

    // Where each ordinal's volumes are: learnt from the first pod of the ordinal to be bound.
    let claims: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut nodes: BTreeMap<String, String> = sts
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(VOLUME_NODES_ANNOTATION))
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    if !claims.is_empty() {
        let mut learnt = false;
        for (ord, p) in &pods {
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_ref())
                && !node.is_empty()
                && !nodes.contains_key(&ord.to_string())
            {
                nodes.insert(ord.to_string(), node.clone());
                learnt = true;
            }
        }
        if learnt {
            let text = serde_json::to_string(&nodes)?;
            let patch = json!({"metadata": {"annotations": {VOLUME_NODES_ANNOTATION: text}}});
            sts = cluster.patch_merge::<StatefulSet>(ns, name, &patch)?;
        }
    }

    let (update, current, collision_count) = sync_revisions(cluster, &sts, &pods)?;

    let ctx = Ctx {
        cluster,
        sts: &sts,
        ns,
        name,
        claims,
        nodes,
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = if on_delete {
        0
    } else {
        strategy
            .rolling_update
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0)
    };
    let plan = Plan {
        replicas,
        ordered: spec.pod_management_policy.as_deref() != Some("Parallel"),
        partition,
        on_delete,
        availability: Availability {
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            // An unreadable clock would stall every wait: treat everything ready as due.
            now_ms: parse_time(&cluster.now()).map_or(i64::MAX, |t| t.0.as_millisecond()),
        },
    };
    manage(&ctx, &mut pods, &plan, &update, &current)?;

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
    Ok(match plan.availability.next_due_ms(pods.values()) {
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
    availability: Availability,
}

/// One pass of Kubernetes' StatefulSet algorithm; returning early means "wait for the pods
/// to change" (their events bring the StatefulSet back) or for a ready pod to become
/// available (the caller requeues for that).
fn manage(
    ctx: &Ctx,
    pods: &mut BTreeMap<i32, Pod>,
    plan: &Plan,
    update: &Revision,
    current: &Revision,
) -> Result<()> {
    let settled = |p: &Pod| plan.availability.settled(p);
    // 1. Every ordinal below `replicas` gets a pod; failed ones are replaced under the same
    //    name. OrderedReady waits for each to be Running, Ready and available before the next.
    for ord in 0..plan.replicas {
        match pods.get(&ord) {
            None => {
                let rev = if !plan.on_delete && ord < plan.partition {
                    current
                } else {
                    update
                };
                match create_pod(ctx, ord, rev)? {
                    Some(p) => _ = pods.insert(ord, p),
                    // Our view lags behind the API: wait for the pod's event.
                    None => return Ok(()),
                }
                if plan.ordered {
                    return Ok(());
                }
            }
            Some(p) if finished(p) && !terminating(p) => {
                delete_pod(ctx, pods, ord)?;
                if plan.ordered {
                    return Ok(());
                }
            }
            Some(p) if plan.ordered && !settled(p) => return Ok(()),
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
                return Ok(());
            }
            continue;
        }
        if plan.ordered && pods.iter().any(|(o, p)| *o != ord && !healthy(p)) {
            return Ok(());
        }
        if plan.ordered && healthy(&pods[&ord]) && !settled(&pods[&ord]) {
            return Ok(());
        }
        delete_pod(ctx, pods, ord)?;
        if plan.ordered {
            return Ok(());
        }
    }

    // 3. RollingUpdate: highest ordinal first down to the partition, one pod at a time,
    //    each back to healthy and available before the next (maxUnavailable is not
    //    honoured: always 1).
    if plan.on_delete {
        return Ok(());
    }
    for ord in (plan.partition..plan.replicas).rev() {
        let Some(p) = pods.get(&ord) else {
            return Ok(());
        };
        if revision_of(p) != Some(update.name.as_str()) && !terminating(p) {
            delete_pod(ctx, pods, ord)?;
            return Ok(());
        }
        if !settled(p) {
            return Ok(());
        }
    }
    Ok(())
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
    if !ctx.claims.is_empty() {
        let volumes = spec.volumes.get_or_insert_default();
        for claim in &ctx.claims {
            // As in Kubernetes, the claim wins over a template volume of the same name.
            volumes.retain(|v| &v.name != claim);
            volumes.push(Volume {
                name: claim.clone(),
                host_path: Some(HostPathVolumeSource {
                    path: volume_path(ctx.ns, claim, ctx.name, ordinal),
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Default::default()
            });
        }
        if let Some(node) = ctx.nodes.get(&ordinal.to_string()) {
            spec.node_name = Some(node.clone());
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

/// Creates pod `ordinal`; `None` when a pod of that name already exists (our view lags).
fn create_pod(ctx: &Ctx, ordinal: i32, revision: &Revision) -> Result<Option<Pod>> {
    let pod = new_pod(ctx, ordinal, revision);
    let pod_name = format!("{}-{ordinal}", ctx.name);
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
            Ok(Some(p))
        }
        Err(ApiError::AlreadyExists(_)) => {
            ctx.cluster.log(
                LogLevel::Debug,
                &format!(
                    "pod {}/{pod_name} exists but is not in our view yet",
                    ctx.ns
                ),
            );
            Ok(None)
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
