//! Pod facts that several controllers need to agree on: which pods count, which are ready,
//! what they request, and the template hash that names a Deployment's ReplicaSets.

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::meta::{controller_of, find_condition, labels_of, new_controller_ref};
use crate::quantity::{QuantityError, parse_bytes, parse_cpu_millis};
use crate::selector::Selector;
use crate::{ApiResult, ApiResultExt, Cluster, ClusterExt};

/// Kubernetes' pod adoption (its ControllerRefManager) for a controller that owns pods by
/// selector: in `owner`'s namespace, active orphans matching `selector` are adopted, owned
/// pods whose labels no longer match are released, and the pods `owner` controls and that
/// match are returned. A pod that vanished or changed meanwhile is skipped; its own event
/// brings a fresh view.
pub fn claim_pods<K>(cluster: &dyn Cluster, owner: &K, selector: &Selector) -> ApiResult<Vec<Pod>>
where
    K: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let meta = owner.metadata();
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let uid = meta.uid.clone().unwrap_or_default();
    let mut owned = Vec::new();
    for pod in cluster.list::<Pod>(ns, "")? {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let matches = selector.matches(labels_of(&pod.metadata));
        match controller_of(&pod.metadata) {
            Some(r) if r.uid == uid && matches => owned.push(pod),
            Some(r) if r.uid == uid => {
                let rest: Vec<_> = pod
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .filter(|o| o.uid != uid)
                    .collect();
                let patch = serde_json::json!({"metadata": {"ownerReferences": rest, "uid": pod.metadata.uid}});
                cluster
                    .patch_merge::<Pod>(ns, &name, &patch)
                    .ignore_stale()?;
            }
            None if matches && is_active(&pod) => {
                let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
                refs.push(new_controller_ref(owner));
                let patch = serde_json::json!({"metadata": {"ownerReferences": refs, "uid": pod.metadata.uid}});
                if let Some(adopted) = cluster
                    .patch_merge::<Pod>(ns, &name, &patch)
                    .ignore_stale()?
                {
                    owned.push(adopted);
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

/// The label (and ReplicaSet name suffix) carrying [`pod_template_hash`].
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The alphabet Kubernetes uses for generated names: no vowels (no accidental words) and no
/// look-alike characters (0/1/3).
pub const SAFE_ALPHABET: &[u8; 27] = b"bcdfghjklmnpqrstvwxz2456789";

/// Kubernetes' toleration matching: key (an empty key with `Exists` matches every key),
/// operator `Equal` (the default) compares values, `Exists` ignores them; an empty effect
/// matches every effect. The scheduler, DaemonSets and node lifecycle must agree on it.
///
/// ```
/// use k8s_openapi::api::core::v1::{Taint, Toleration};
/// use kedge_guest::pod::tolerates;
/// let taint = Taint { key: "dedicated".into(), value: Some("gpu".into()),
///     effect: "NoSchedule".into(), ..Default::default() };
/// let exact = Toleration { key: Some("dedicated".into()), value: Some("gpu".into()),
///     ..Default::default() };
/// let wrong = Toleration { key: Some("dedicated".into()), value: Some("cpu".into()),
///     ..Default::default() };
/// let all = Toleration { operator: Some("Exists".into()), ..Default::default() };
/// assert!(tolerates(&exact, &taint) && tolerates(&all, &taint) && !tolerates(&wrong, &taint));
/// ```
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let key_ok = match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = match tol.operator.as_deref() {
        Some("Exists") => true,
        _ => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
    };
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    key_ok && value_ok && effect_ok
}

/// Whether a pod still counts toward its controller's replicas: not being deleted and not
/// finished.
///
/// ```
/// assert!(kedge_guest::pod::is_active(&k8s_openapi::api::core::v1::Pod::default()));
/// ```
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether the pod's `Ready` condition is `True`, i.e. it may receive traffic.
///
/// ```
/// assert!(!kedge_guest::pod::is_ready(&k8s_openapi::api::core::v1::Pod::default()));
/// ```
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// When a ready pod becomes available, in epoch milliseconds (Kubernetes' `IsPodAvailable`):
/// its Ready condition's `lastTransitionTime` plus `min_ready_seconds`, so a controller can
/// both count available pods (`<= now`) and ask to look again when the next one is due, since
/// no event announces that moment. `None` for a pod that is not ready, or that is ready
/// without a transition time while `min_ready_seconds` is positive (Kubernetes never counts
/// those); with `min_ready_seconds <= 0` a ready pod is available from the start of time.
///
/// ```
/// use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
/// use kedge_guest::meta::parse_time;
/// use kedge_guest::pod::available_at;
/// let ready = PodCondition { type_: "Ready".into(), status: "True".into(),
///     last_transition_time: parse_time("2025-01-01T00:00:00Z"), ..Default::default() };
/// let pod = Pod { status: Some(PodStatus { conditions: Some(vec![ready]), ..Default::default() }),
///     ..Default::default() };
/// let since = parse_time("2025-01-01T00:00:00Z").unwrap().0.as_millisecond();
/// assert_eq!(available_at(&pod, 10), Some(since + 10_000));
/// assert_eq!(available_at(&pod, 0), Some(i64::MIN));
/// assert_eq!(available_at(&Pod::default(), 0), None);
/// ```
pub fn available_at(pod: &Pod, min_ready_seconds: i32) -> Option<i64> {
    if !is_ready(pod) {
        return None;
    }
    if min_ready_seconds <= 0 {
        return Some(i64::MIN);
    }
    let since = pod
        .status
        .as_ref()?
        .conditions
        .as_deref()
        .and_then(|c| find_condition(c, "Ready"))?
        .last_transition_time
        .as_ref()?;
    Some(since.0.as_millisecond() + i64::from(min_ready_seconds) * 1000)
}

/// CPU and memory a pod asks the scheduler for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Millicores.
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

impl Requests {
    fn max(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
        }
    }

    /// Adds two pods' requests without overflow, for summing a node's load.
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

fn requests_of(
    map: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> Result<Requests, QuantityError> {
    let Some(map) = map else {
        return Ok(Requests::default());
    };
    Ok(Requests {
        cpu_millis: map
            .get("cpu")
            .map(|q| parse_cpu_millis(&q.0))
            .transpose()?
            .unwrap_or(0),
        memory_bytes: map
            .get("memory")
            .map(|q| parse_bytes(&q.0))
            .transpose()?
            .unwrap_or(0),
    })
}

/// Effective requests the way kube-scheduler computes them: init containers run one at a
/// time before the app containers, so the pod needs `max(sum(containers), max(init))`, plus
/// the runtime-class `overhead`.
///
/// ```
/// use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
/// use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
/// let c = Container {
///     resources: Some(ResourceRequirements {
///         requests: Some([("cpu".to_string(), Quantity("250m".into()))].into()),
///         ..Default::default()
///     }),
///     ..Default::default()
/// };
/// let spec = PodSpec { containers: vec![c.clone(), c], ..Default::default() };
/// assert_eq!(kedge_guest::pod::pod_requests(&spec).unwrap().cpu_millis, 500);
/// ```
pub fn pod_requests(spec: &PodSpec) -> Result<Requests, QuantityError> {
    let mut app = Requests::default();
    for c in &spec.containers {
        app = app.saturating_add(requests_of(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        )?);
    }
    let mut init = Requests::default();
    for c in spec.init_containers.iter().flatten() {
        init = init.max(requests_of(
            c.resources.as_ref().and_then(|r| r.requests.as_ref()),
        )?);
    }
    Ok(app
        .max(init)
        .saturating_add(requests_of(spec.overhead.as_ref())?))
}

/// Renders a number in [`SAFE_ALPHABET`] (base 27, most significant first) so hashes can
/// appear in names and label values.
///
/// ```
/// assert_eq!(kedge_guest::pod::safe_encode(0), "b");
/// assert_eq!(kedge_guest::pod::safe_encode(27), "cb");
/// ```
pub fn safe_encode(mut n: u32) -> String {
    let mut out = Vec::new();
    loop {
        out.push(SAFE_ALPHABET[(n % 27) as usize]);
        n /= 27;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("alphabet is ASCII")
}

/// FNV-1a, 32 bit: tiny, dependency-free and stable across platforms and releases.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Identifies a Deployment's pod template so each template version gets its own
/// ReplicaSet. FNV-1a 32 over the template's serde_json serialization (fields in a fixed
/// order, maps sorted), rendered in base 27 over [`SAFE_ALPHABET`]. Unlike Kubernetes it does
/// not mix in a collision count, and values differ from kube-controller-manager's (which
/// hashes a Go-specific dump) — so a kedge Deployment adopted from a real cluster gets a new
/// ReplicaSet once.
///
/// ```
/// use k8s_openapi::api::core::v1::PodTemplateSpec;
/// let h = kedge_guest::pod::pod_template_hash(&PodTemplateSpec::default());
/// assert_eq!(h, kedge_guest::pod::pod_template_hash(&PodTemplateSpec::default()));
/// assert!(h.len() <= 7);
/// ```
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).expect("k8s-openapi types always serialize");
    safe_encode(fnv1a32(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodStatus, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn fnv_reference_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn safe_encode_covers_u32() {
        assert_eq!(safe_encode(26), "9");
        assert_eq!(safe_encode(u32::MAX).len(), 7);
        assert!(
            safe_encode(u32::MAX)
                .bytes()
                .all(|b| SAFE_ALPHABET.contains(&b))
        );
    }

    #[test]
    fn template_hash_changes_with_template() {
        let mut t = PodTemplateSpec::default();
        let a = pod_template_hash(&t);
        t.metadata.get_or_insert_default().labels =
            Some([("app".to_string(), "web".to_string())].into());
        assert_ne!(a, pod_template_hash(&t));
    }

    fn container(cpu: &str, mem: &str) -> Container {
        Container {
            resources: Some(ResourceRequirements {
                requests: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity(mem.into())),
                    ]
                    .into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requests_take_init_max_and_overhead() {
        let spec = PodSpec {
            containers: vec![container("100m", "64Mi"), container("200m", "64Mi")],
            init_containers: Some(vec![container("1", "16Mi"), container("500m", "256Mi")]),
            overhead: Some([("cpu".to_string(), Quantity("10m".into()))].into()),
            ..Default::default()
        };
        assert_eq!(
            pod_requests(&spec).unwrap(),
            Requests {
                cpu_millis: 1010,
                memory_bytes: 256 << 20
            }
        );
        assert_eq!(
            pod_requests(&PodSpec::default()).unwrap(),
            Requests::default()
        );
        let bad = PodSpec {
            containers: vec![container("lots", "1")],
            ..Default::default()
        };
        assert!(pod_requests(&bad).is_err());
    }

    #[test]
    fn availability_needs_a_transition_time_once_min_ready_is_set() {
        let mut pod = Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(available_at(&pod, 0), Some(i64::MIN));
        assert_eq!(available_at(&pod, 5), None);
        fn ready(pod: &mut Pod) -> &mut PodCondition {
            &mut pod.status.as_mut().unwrap().conditions.as_mut().unwrap()[0]
        }
        ready(&mut pod).last_transition_time = crate::meta::parse_time("1970-01-01T00:00:01Z");
        assert_eq!(available_at(&pod, 5), Some(6_000));
        ready(&mut pod).status = "False".into();
        assert_eq!(available_at(&pod, 5), None);
    }

    #[test]
    fn active_and_ready() {
        let mut pod = Pod::default();
        assert!(is_active(&pod) && !is_ready(&pod));
        pod.status = Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(is_active(&pod) && is_ready(&pod));
        pod.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(!is_active(&pod));
        pod.status.as_mut().unwrap().phase = Some("Running".into());
        pod.metadata.deletion_timestamp = crate::meta::parse_time("2025-01-01T00:00:00Z");
        assert!(!is_active(&pod));
    }
}
