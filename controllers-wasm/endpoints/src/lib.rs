//! The endpoints controller as a kedge plugin: for every Service with a selector, an Endpoints
//! object of the same name listing the matching pods — Ready ones under `addresses`, others
//! under `notReadyAddresses` (all under `addresses` with `publishNotReadyAddresses`) — and
//! the Service's ports resolved against each pod (`targetPort` by number or by container port
//! name). Services without a selector keep their hand-written Endpoints; a deleted Service's
//! Endpoints go with it.
//!
//! Every Service with endpoints also gets `discovery.k8s.io/v1` EndpointSlices (one per port
//! set, labelled `kubernetes.io/service-name`, owned by the Service), which is what
//! `kubectl describe service` reads: built from the same subsets for selector Services
//! (managed by `endpointslice-controller.k8s.io`), mirrored from the hand-written Endpoints
//! for the others (`endpointslicemirroring-controller.k8s.io`, unless the Endpoints carry
//! `endpointslice.kubernetes.io/skip-mirror: "true"`).
//!
//! Pods are not owned by Services: the plugin watches them by selector (an event on a pod
//! enqueues every Service of its namespace whose `spec.selector` matches the pod's labels,
//! before or after the change), and Endpoints by name (hand-written ones are mirrored, and a
//! managed one edited by hand is put back; an Endpoints without a Service is left alone until
//! a Service of its name comes and goes), as kube's endpoints controllers do. The slices are
//! owned, so one changed by hand is put back too. There is no periodic resync.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Event, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_guest::meta::new_controller_ref;
use kedge_guest::pod::is_ready;
use kedge_guest::{
    ApiError, ApiResultExt, Cluster, ClusterExt, Controller, KindRef, ObjectKey, Outcome,
    Registration, Result, Watch,
};

pub struct EndpointsController;

impl Controller for EndpointsController {
    fn registration() -> Registration {
        Registration::new("endpoints", KindRef::of::<Service>())
            // Its slices (controller-owned): one edited or deleted by hand is put back.
            .owns([KindRef::of::<EndpointSlice>()])
            .reads([KindRef::of::<Pod>()])
            .writes([
                KindRef::of::<Endpoints>(),
                KindRef::of::<EndpointSlice>(),
                KindRef::of::<Event>(),
            ])
    }

    fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
        reconcile(cluster, key)
    }

    fn watches() -> Vec<Watch> {
        vec![
            Watch::selector_map::<Pod>("spec.selector"),
            Watch::same_name::<Endpoints>(),
        ]
    }
}

kedge_guest::export_controller!(EndpointsController);

/// The port a Service port reaches on `pod`, if the pod has it.
fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

fn address(pod: &Pod, ip: &str, service: &str) -> EndpointAddress {
    let spec = pod.spec.as_ref();
    // A pod with `subdomain` = the Service's name gets a DNS name under it.
    let hostname = spec
        .filter(|s| s.subdomain.as_deref() == Some(service))
        .and_then(|s| s.hostname.clone());
    EndpointAddress {
        ip: ip.to_string(),
        hostname,
        node_name: spec.and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    }
}

/// The subsets for `service` over `pods`: pods grouped by the ports they resolve, addresses
/// sorted so the result is stable from one pass to the next.
pub fn subsets(service: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let spec = service.spec.clone().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or("");
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    type Group = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Group> = BTreeMap::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() && !publish_not_ready {
            continue;
        }
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else {
            continue;
        };
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let target = resolve_port(pod, p.target_port.as_ref(), p.port)?;
                Some((
                    p.name.clone().unwrap_or_default(),
                    target,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ))
            })
            .collect();
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let entry = groups.entry(ports).or_default();
        let addr = address(pod, ip, name);
        if publish_not_ready || is_ready(pod) {
            entry.0.push(addr);
        } else {
            entry.1.push(addr);
        }
    }
    let key = |a: &EndpointAddress| {
        (
            a.ip.clone(),
            a.target_ref.as_ref().and_then(|r| r.name.clone()),
        )
    };
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by_key(key);
            not_ready.sort_by_key(key);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name: (!name.is_empty()).then_some(name),
                            port,
                            protocol: Some(protocol),
                            ..Default::default()
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

fn reconcile(cluster: &dyn Cluster, key: &ObjectKey) -> Result<Outcome> {
    let ns = key.namespace.as_str();
    let existing = cluster.get::<Endpoints>(ns, &key.name)?;
    let Some(service) = cluster.get::<Service>(ns, &key.name)? else {
        // The Service is gone: so are its endpoints.
        if existing.is_some() {
            cluster
                .delete::<Endpoints>(ns, &key.name)
                .ignore_not_found()?;
        }
        return Ok(Outcome::done());
    };
    let Some(selector) = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
    else {
        // No selector: the user manages the Endpoints; mirror them into slices.
        let mirror = existing.as_ref().filter(|ep| {
            ep.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SKIP_MIRROR))
                .map(String::as_str)
                != Some("true")
        });
        let subsets = mirror.and_then(|ep| ep.subsets.clone()).unwrap_or_default();
        sync_slices(cluster, &service, &subsets, MIRRORING)?;
        return Ok(Outcome::done());
    };
    let pods: Vec<Pod> = cluster
        .list::<Pod>(ns, "")?
        .into_iter()
        .filter(|p| {
            let labels = p.metadata.labels.clone().unwrap_or_default();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    let subsets = subsets(&service, &pods);
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    sync_slices(cluster, &service, &subsets, MANAGED_BY)?;
    let want_subsets = (!subsets.is_empty()).then_some(subsets);
    match existing {
        Some(mut ep) => {
            let same_labels = ep.metadata.labels.clone().unwrap_or_default() == labels;
            if ep.subsets == want_subsets && same_labels {
                return Ok(Outcome::done());
            }
            ep.subsets = want_subsets;
            ep.metadata.labels = Some(labels);
            cluster.update(ns, &ep).ignore_stale()?;
        }
        None => {
            let mut ep = Endpoints::default();
            ep.metadata.name = Some(key.name.clone());
            ep.metadata.namespace = Some(ns.to_string());
            ep.metadata.labels = Some(labels);
            ep.subsets = want_subsets;
            match cluster.create(ns, &ep) {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Outcome::done())
}

const SERVICE_NAME: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
const MIRRORING: &str = "endpointslicemirroring-controller.k8s.io";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// The EndpointSlices of `subsets`: one per subset (a set of ports), IPv4.
pub fn slices(service: &Service, subsets: &[EndpointSubset], manager: &str) -> Vec<EndpointSlice> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY_LABEL.into(), manager.into());
    let endpoint = |a: &EndpointAddress, ready: bool| SliceEndpoint {
        addresses: vec![a.ip.clone()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        hostname: a.hostname.clone(),
        node_name: a.node_name.clone(),
        target_ref: a.target_ref.clone(),
        ..Default::default()
    };
    subsets
        .iter()
        .map(|s| {
            let mut endpoints: Vec<SliceEndpoint> = s
                .addresses
                .iter()
                .flatten()
                .map(|a| endpoint(a, true))
                .collect();
            endpoints.extend(
                s.not_ready_addresses
                    .iter()
                    .flatten()
                    .map(|a| endpoint(a, false)),
            );
            let mut slice = EndpointSlice {
                address_type: "IPv4".into(),
                endpoints,
                ports: s.ports.as_ref().map(|ps| {
                    ps.iter()
                        .map(|p| SlicePort {
                            // Always set, "" when unnamed: clients dereference it.
                            name: Some(p.name.clone().unwrap_or_default()),
                            port: Some(p.port),
                            protocol: p.protocol.clone(),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect()
                }),
                ..Default::default()
            };
            slice.metadata.generate_name = Some(format!("{name}-"));
            slice.metadata.namespace = service.metadata.namespace.clone();
            slice.metadata.labels = Some(labels.clone());
            slice.metadata.owner_references = Some(vec![new_controller_ref(service)]);
            slice
        })
        .collect()
}

/// Makes the Service's slices of `manager` those of `subsets`: existing ones are updated in
/// place (paired in name order), extra ones deleted, missing ones created. Slices another
/// manager keeps (the API server's own for `kubernetes`) are left alone, as Kubernetes'
/// controllers each touch only their own.
fn sync_slices(
    cluster: &dyn Cluster,
    service: &Service,
    subsets: &[EndpointSubset],
    manager: &str,
) -> Result<()> {
    let ns = service.metadata.namespace.as_deref().unwrap_or_default();
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let manager_of = |s: &EndpointSlice| {
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .cloned()
    };
    let all = cluster.list::<EndpointSlice>(ns, &format!("{SERVICE_NAME}={name}"))?;
    // The slices of this controller's other role (a Service that gained or lost its
    // selector) go; those of any other manager stay.
    for s in &all {
        let other = if manager == MANAGED_BY {
            MIRRORING
        } else {
            MANAGED_BY
        };
        if manager_of(s).as_deref() == Some(other) {
            let n = s.metadata.name.as_deref().unwrap_or_default();
            cluster.delete::<EndpointSlice>(ns, n).ignore_not_found()?;
        }
    }
    // Unlabelled slices of the Service are taken as ours (kedge's before the label).
    let mut have: Vec<EndpointSlice> = all
        .into_iter()
        .filter(|s| manager_of(s).is_none_or(|m| m == manager))
        .collect();
    have.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let want = slices(service, subsets, manager);
    let mut have = have.into_iter();
    for w in want {
        match have.next() {
            Some(mut h) => {
                if h.endpoints == w.endpoints
                    && h.ports == w.ports
                    && h.metadata.labels == w.metadata.labels
                {
                    continue;
                }
                h.endpoints = w.endpoints;
                h.ports = w.ports;
                h.address_type = w.address_type;
                h.metadata.labels = w.metadata.labels;
                cluster.update(ns, &h).ignore_stale()?;
            }
            None => match cluster.create(ns, &w) {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    for extra in have {
        let n = extra.metadata.name.as_deref().unwrap_or_default();
        cluster.delete::<EndpointSlice>(ns, n).ignore_not_found()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
