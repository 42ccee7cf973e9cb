use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Endpoints, Pod, PodCondition, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kedge_guest::{ClusterExt, Controller, FakeCluster, ObjectKey, Outcome};

use super::*;

fn service(name: &str, selector: Option<&[(&str, &str)]>, target: IntOrString) -> Service {
    let mut s = Service::default();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = Some("default".into());
    s.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    s.spec = Some(ServiceSpec {
        selector: selector.map(|sel| {
            sel.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ports: Some(vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        ..Default::default()
    });
    s
}

fn pod(name: &str, ip: Option<&str>, ready: bool, app: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p.metadata.labels = Some([("app".to_string(), app.to_string())].into());
    p.spec = Some(PodSpec {
        node_name: Some("edge-1".into()),
        containers: vec![Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("web".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }],
        ..Default::default()
    });
    p.status = Some(PodStatus {
        pod_ip: ip.map(String::from),
        phase: Some("Running".into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    p
}

fn run(fake: &FakeCluster, name: &str) -> Outcome {
    EndpointsController::reconcile(fake, &ObjectKey::of::<Service>("default", name)).unwrap()
}

fn endpoints(fake: &FakeCluster, name: &str) -> Option<Endpoints> {
    fake.get::<Endpoints>("default", name).unwrap()
}

fn names(addrs: &Option<Vec<EndpointAddress>>) -> Vec<String> {
    addrs
        .iter()
        .flatten()
        .filter_map(|a| a.target_ref.as_ref().and_then(|r| r.name.clone()))
        .collect()
}

#[test]
fn selected_pods_become_addresses_with_resolved_ports() {
    let fake = FakeCluster::new();
    fake.seed(&service(
        "web",
        Some(&[("app", "web")]),
        IntOrString::String("web".into()),
    ));
    fake.seed(&pod("b", Some("10.0.0.2"), true, "web"));
    fake.seed(&pod("a", Some("10.0.0.1"), true, "web"));
    fake.seed(&pod("slow", Some("10.0.0.3"), false, "web"));
    fake.seed(&pod("pending", None, false, "web"));
    fake.seed(&pod("other", Some("10.0.0.9"), true, "db"));
    assert_eq!(run(&fake, "web"), Outcome::done());
    let ep = endpoints(&fake, "web").expect("created");
    let subsets = ep.subsets.unwrap();
    assert_eq!(subsets.len(), 1);
    assert_eq!(names(&subsets[0].addresses), ["a", "b"]);
    assert_eq!(names(&subsets[0].not_ready_addresses), ["slow"]);
    let port = &subsets[0].ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("http"), 8080, Some("TCP"))
    );
    assert_eq!(
        ep.metadata.labels.unwrap().get("app").map(String::as_str),
        Some("web")
    );

    // Converged: a second pass writes nothing.
    fake.clear_writes();
    run(&fake, "web");
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    // A pod going away is noticed on the next pass.
    fake.delete::<Pod>("default", "b").unwrap();
    run(&fake, "web");
    let subsets = endpoints(&fake, "web").unwrap().subsets.unwrap();
    assert_eq!(names(&subsets[0].addresses), ["a"]);
}

#[test]
fn services_without_selector_keep_their_manual_endpoints_and_deletion_cleans_up() {
    let fake = FakeCluster::new();
    fake.seed(&service("manual", None, IntOrString::Int(9376)));
    let mut ep = Endpoints::default();
    ep.metadata.name = Some("manual".into());
    ep.metadata.namespace = Some("default".into());
    fake.seed(&ep);
    // The hand-written Endpoints (whose events enqueue their Service) are mirrored into slices.
    assert_eq!(run(&fake, "manual"), Outcome::done());
    assert!(
        !fake.writes().iter().any(|w| w.kind == "Endpoints"),
        "{:?}",
        fake.writes()
    );
    let mut ep = endpoints(&fake, "manual").unwrap();
    ep.subsets = Some(vec![EndpointSubset {
        addresses: Some(vec![EndpointAddress {
            ip: "192.0.2.42".into(),
            ..Default::default()
        }]),
        ports: Some(vec![EndpointPort {
            port: 9376,
            ..Default::default()
        }]),
        ..Default::default()
    }]);
    fake.seed(&ep);
    run(&fake, "manual");
    let slices = fake
        .list::<k8s_openapi::api::discovery::v1::EndpointSlice>(
            "default",
            "kubernetes.io/service-name=manual",
        )
        .unwrap();
    assert_eq!(slices.len(), 1);
    assert_eq!(slices[0].endpoints[0].addresses, ["192.0.2.42"]);
    assert_eq!(
        slices[0].metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/managed-by"],
        "endpointslicemirroring-controller.k8s.io"
    );

    // A Service deleted: its endpoints go.
    fake.delete::<Service>("default", "manual").unwrap();
    run(&fake, "manual");
    assert!(endpoints(&fake, "manual").is_none());
}

/// Regression: the `kubernetes` Service (no selector, Endpoints marked skip-mirror) keeps the
/// EndpointSlice the API server writes for it; the controller only touches its own slices.
#[test]
fn another_managers_slice_is_left_alone() {
    use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
    let fake = FakeCluster::new();
    fake.seed(&service("kubernetes", None, IntOrString::Int(6443)));
    let mut ep = Endpoints::default();
    ep.metadata.name = Some("kubernetes".into());
    ep.metadata.namespace = Some("default".into());
    ep.metadata.labels = Some(
        [(
            "endpointslice.kubernetes.io/skip-mirror".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    fake.seed(&ep);
    let mut slice = EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: vec![SliceEndpoint {
            addresses: vec!["192.0.2.1".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    slice.metadata.name = Some("kubernetes".into());
    slice.metadata.namespace = Some("default".into());
    slice.metadata.labels = Some(
        [
            (
                "kubernetes.io/service-name".to_string(),
                "kubernetes".to_string(),
            ),
            (
                "endpointslice.kubernetes.io/managed-by".to_string(),
                "kedge-server".to_string(),
            ),
        ]
        .into(),
    );
    fake.seed(&slice);
    run(&fake, "kubernetes");
    let slices = fake
        .list::<EndpointSlice>("default", "kubernetes.io/service-name=kubernetes")
        .unwrap();
    assert_eq!(slices.len(), 1, "{slices:?}");
    assert_eq!(slices[0].endpoints[0].addresses, ["192.0.2.1"]);
}

#[test]
fn numeric_target_ports_and_publish_not_ready() {
    let fake = FakeCluster::new();
    let mut s = service("db", Some(&[("app", "db")]), IntOrString::Int(5432));
    s.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
    fake.seed(&s);
    fake.seed(&pod("db-0", Some("10.0.0.5"), false, "db"));
    run(&fake, "db");
    let subsets = endpoints(&fake, "db").unwrap().subsets.unwrap();
    assert_eq!(names(&subsets[0].addresses), ["db-0"]);
    assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 5432);
}

#[test]
fn selector_services_get_an_endpoint_slice_kubectl_describe_reads() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let fake = FakeCluster::new();
    let mut svc = service(
        "web",
        Some(&[("app", "web")]),
        IntOrString::String("web".into()),
    );
    svc.metadata.uid = Some("svc-uid".into());
    fake.seed(&svc);
    fake.seed(&pod("a", Some("10.0.0.1"), true, "web"));
    fake.seed(&pod("b", Some("10.0.0.2"), false, "web"));
    let key = ObjectKey::of::<Service>("default", "web");
    EndpointsController::reconcile(&fake, &key).unwrap();
    let slices = fake
        .list::<EndpointSlice>("default", "kubernetes.io/service-name=web")
        .unwrap();
    assert_eq!(slices.len(), 1);
    let s = &slices[0];
    assert_eq!(s.address_type, "IPv4");
    assert_eq!(s.endpoints.len(), 2);
    let ready: Vec<_> = s
        .endpoints
        .iter()
        .map(|e| {
            (
                e.addresses[0].as_str(),
                e.conditions.as_ref().unwrap().ready,
            )
        })
        .collect();
    assert!(ready.contains(&("10.0.0.1", Some(true))), "{ready:?}");
    assert!(ready.contains(&("10.0.0.2", Some(false))), "{ready:?}");
    assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    assert_eq!(
        s.metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(
        s.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );
    // Converged: a second pass writes nothing.
    fake.clear_writes();
    EndpointsController::reconcile(&fake, &key).unwrap();
    assert!(
        !fake.writes().iter().any(|w| w.kind == "EndpointSlice"),
        "{:?}",
        fake.writes()
    );
    // No pods left: the slice goes.
    fake.delete::<Pod>("default", "a").unwrap();
    fake.delete::<Pod>("default", "b").unwrap();
    EndpointsController::reconcile(&fake, &key).unwrap();
    assert!(
        fake.list::<EndpointSlice>("default", "kubernetes.io/service-name=web")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn pods_are_watched_by_the_service_selector_and_endpoints_by_name() {
    use kedge_guest::{Watch, WatchMap};
    assert_eq!(
        EndpointsController::watches(),
        vec![
            Watch::selector_map::<Pod>("spec.selector"),
            Watch {
                kind: kedge_guest::KindRef::of::<Endpoints>(),
                by: WatchMap::SameName,
            },
        ]
    );
}
