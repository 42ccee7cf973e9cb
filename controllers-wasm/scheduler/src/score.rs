//! Score plugins and their normalizations. As in kube-scheduler, every plugin's scores are
//! brought to 0–100 over the feasible nodes and summed with the plugin's weight; the
//! weights are kube-scheduler's defaults plus kedge's pod-count spreading.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use kedge_guest::pod::{Requests, tolerates};

/// The highest score one plugin gives a node.
pub const MAX: i64 = 100;

/// Plugin weights: kube-scheduler's default profile, and kedge's FewestPods.
pub const TAINT_WEIGHT: i64 = 3;
pub const NODE_AFFINITY_WEIGHT: i64 = 2;
pub const SPREAD_WEIGHT: i64 = 2;
pub const INTER_POD_WEIGHT: i64 = 2;
pub const LEAST_ALLOCATED_WEIGHT: i64 = 1;
pub const BALANCED_WEIGHT: i64 = 1;
pub const IMAGE_WEIGHT: i64 = 1;
/// Edge pods often request nothing, which resource scores cannot tell apart: fewer pods
/// scores higher, so replicas spread across the fleet.
pub const FEWEST_PODS_WEIGHT: i64 = 1;

/// kube-scheduler's `DefaultNormalizeScore`: scale so the highest is 100 (reversed: the
/// lowest raw score gets 100). All zero stays zero, or becomes 100 when reversed.
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = MAX * *s / max;
        if reverse {
            *s = MAX - *s;
        }
    }
}

/// Min–max scaling to 0–100 (InterPodAffinity's normalization; raw scores may be negative).
/// All equal: all zero.
pub fn min_max_normalize(scores: &mut [i64]) {
    let (Some(min), Some(max)) = (scores.iter().min().copied(), scores.iter().max().copied())
    else {
        return;
    };
    for s in scores.iter_mut() {
        *s = if max > min {
            MAX * (*s - min) / (max - min)
        } else {
            0
        };
    }
}

/// PodTopologySpread's normalization: fewer matching pods scores higher; nodes without the
/// topology keys (`None`) get 0.
pub fn spread_normalize(raw: &[Option<i64>]) -> Vec<i64> {
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().max().unwrap_or(0);
    raw.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX,
            Some(s) => MAX * (max + min - s) / max,
        })
        .collect()
}

/// kube-scheduler's defaults for a pod that requests no CPU or memory, so such pods still
/// load the node in scores (not in the fit check).
const NON_ZERO_CPU_MILLIS: u64 = 100;
const NON_ZERO_MEMORY_BYTES: u64 = 200 << 20;

/// Requests with the scoring defaults applied (per pod, where Kubernetes does it per
/// container).
pub fn non_zero(r: Requests) -> Requests {
    Requests {
        cpu_millis: if r.cpu_millis == 0 {
            NON_ZERO_CPU_MILLIS
        } else {
            r.cpu_millis
        },
        memory_bytes: if r.memory_bytes == 0 {
            NON_ZERO_MEMORY_BYTES
        } else {
            r.memory_bytes
        },
    }
}

/// A node's allocatable CPU and memory.
#[derive(Clone, Copy)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

fn free_share(requested: u64, capacity: u64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    ((capacity - requested) as u128 * MAX as u128 / capacity as u128) as i64
}

/// NodeResourcesFit's LeastAllocated: the mean free share of CPU and memory after placing
/// the pod (`requested` includes it).
pub fn least_allocated(requested: Requests, cap: Capacity) -> i64 {
    (free_share(requested.cpu_millis, cap.cpu_millis)
        + free_share(requested.memory_bytes, cap.memory_bytes))
        / 2
}

/// NodeResourcesBalancedAllocation: 100 when CPU and memory are used in equal shares.
pub fn balanced(requested: Requests, cap: Capacity) -> i64 {
    let share = |r: u64, c: u64| {
        if c == 0 {
            1.0
        } else {
            (r as f64 / c as f64).min(1.0)
        }
    };
    let cpu = share(requested.cpu_millis, cap.cpu_millis);
    let memory = share(requested.memory_bytes, cap.memory_bytes);
    // The standard deviation of two values is half their distance.
    let std = (cpu - memory).abs() / 2.0;
    ((1.0 - std) * MAX as f64) as i64
}

/// TaintToleration's raw score: `PreferNoSchedule` taints the pod does not tolerate (fewer
/// is better: normalize reversed).
pub fn intolerable_prefer_no_schedule(node: &Node, pod: &Pod) -> i64 {
    let tolerations: Vec<_> = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|t| {
            t.effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
        })
        .collect();
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
        .count() as i64
}

/// An image reference in one canonical spelling, so a pod's `nginx` finds a node's
/// `docker.io/library/nginx:latest`: Docker Hub's registry and `library/` made explicit, a
/// missing tag read as `latest`, and a digest, when present, standing for the content
/// (`repo@sha256:…`, the tag dropped).
pub fn normalize_image(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name[last..].rfind(':') {
        Some(i) => (&name[..last + i], Some(&name[last + i + 1..])),
        None => (name, None),
    };
    let first = repo.split('/').next().unwrap_or("");
    let has_registry = repo.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    let repo = if !has_registry {
        if repo.contains('/') {
            format!("docker.io/{repo}")
        } else {
            format!("docker.io/library/{repo}")
        }
    } else if let Some(path) = repo.strip_prefix("docker.io/")
        && !path.contains('/')
    {
        format!("docker.io/library/{path}")
    } else {
        repo.to_owned()
    };
    match (digest, tag) {
        (Some(d), _) => format!("{repo}@{d}"),
        (None, Some(t)) => format!("{repo}:{t}"),
        (None, None) => format!("{repo}:latest"),
    }
}

fn pod_images(spec: &PodSpec) -> impl Iterator<Item = String> + '_ {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter_map(|c| c.image.as_deref())
        .map(normalize_image)
}

/// ImageLocality: which nodes already hold the pod's images (from `status.images`), and how
/// widely each image is spread (an image on every node says little about any one of them).
pub struct ImageLocality {
    /// The pod's images, one entry per container (init containers included).
    wanted: Vec<String>,
    /// Node name → image → size in bytes.
    on_node: HashMap<String, HashMap<String, i64>>,
    /// Image → on how many nodes.
    spread: HashMap<String, usize>,
    total_nodes: usize,
}

/// Below this the images hardly matter (23 MiB, kube-scheduler's `minThreshold`).
const MIN_THRESHOLD: i64 = 23 << 20;
/// Above this per container they count no more (1000 MiB).
const MAX_CONTAINER_THRESHOLD: i64 = 1000 << 20;

impl ImageLocality {
    pub fn new(spec: &PodSpec, nodes: &[Node]) -> Self {
        let wanted: Vec<String> = pod_images(spec).collect();
        let set: HashSet<&str> = wanted.iter().map(String::as_str).collect();
        let mut on_node: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let mut spread: HashMap<String, usize> = HashMap::new();
        for node in nodes {
            let images = node.status.as_ref().and_then(|s| s.images.as_deref());
            let mut here: HashMap<String, i64> = HashMap::new();
            for image in images.unwrap_or(&[]) {
                for name in image.names.iter().flatten() {
                    let name = normalize_image(name);
                    if set.contains(name.as_str()) {
                        here.insert(name, image.size_bytes.unwrap_or(0));
                    }
                }
            }
            for name in here.keys() {
                *spread.entry(name.clone()).or_default() += 1;
            }
            if !here.is_empty() {
                on_node.insert(node.metadata.name.clone().unwrap_or_default(), here);
            }
        }
        ImageLocality {
            wanted,
            on_node,
            spread,
            total_nodes: nodes.len(),
        }
    }

    /// Whether any node holds any of the pod's images (otherwise the score is skipped).
    pub fn applies(&self) -> bool {
        !self.on_node.is_empty()
    }

    /// 0–100: the size of the images already on `node`, each scaled by the share of nodes
    /// holding it, between the thresholds.
    pub fn score(&self, node: &Node) -> i64 {
        let Some(here) = self
            .on_node
            .get(node.metadata.name.as_deref().unwrap_or(""))
        else {
            return 0;
        };
        let sum: i64 = self
            .wanted
            .iter()
            .filter_map(|image| {
                let size = *here.get(image)?;
                let nodes = self.spread.get(image).copied().unwrap_or(0);
                Some((size as f64 * nodes as f64 / self.total_nodes.max(1) as f64) as i64)
            })
            .sum();
        let max_threshold = MAX_CONTAINER_THRESHOLD * self.wanted.len().max(1) as i64;
        let clamped = sum.clamp(MIN_THRESHOLD, max_threshold);
        MAX * (clamped - MIN_THRESHOLD) / (max_threshold - MIN_THRESHOLD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_normalize() {
        for (given, want) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("docker.io/nginx", "docker.io/library/nginx:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("ghcr.io/a/b:v1@sha256:abc", "ghcr.io/a/b@sha256:abc"),
            ("registry:5000/x/y:2", "registry:5000/x/y:2"),
        ] {
            assert_eq!(normalize_image(given), want, "{given}");
        }
    }

    #[test]
    fn normalizations() {
        let mut s = [0, 5, 10];
        default_normalize(&mut s, false);
        assert_eq!(s, [0, 50, 100]);
        let mut s = [0, 5, 10];
        default_normalize(&mut s, true);
        assert_eq!(s, [100, 50, 0]);
        let mut s = [0, 0];
        default_normalize(&mut s, true);
        assert_eq!(s, [100, 100]);
        let mut s = [-4, 0, 4];
        min_max_normalize(&mut s);
        assert_eq!(s, [0, 50, 100]);
        assert_eq!(spread_normalize(&[Some(1), Some(3), None]), [100, 33, 0]);
    }

    #[test]
    fn resource_scores() {
        let cap = Capacity {
            cpu_millis: 4000,
            memory_bytes: 4 << 30,
        };
        let half = Requests {
            cpu_millis: 2000,
            memory_bytes: 2 << 30,
        };
        assert_eq!(least_allocated(half, cap), 50);
        assert_eq!(balanced(half, cap), 100);
        let skewed = Requests {
            cpu_millis: 4000,
            memory_bytes: 0,
        };
        assert_eq!(balanced(skewed, cap), 50);
        assert_eq!(least_allocated(skewed, cap), 50);
    }
}
