//! Services select pods: the endpoints plugin keeps each selector Service's Endpoints listing
//! its Ready pods (pods share their node's network, so addresses are node addresses).

use serde_json::Value;

use crate::harness::Cluster;

fn endpoint_pods(c: &Cluster, name: &str) -> Vec<String> {
    let r = c.kubectl(&["get", "endpoints", name, "-o", "json"]);
    let Ok(v) = serde_json::from_str::<Value>(&r.stdout) else {
        return Vec::new();
    };
    let mut names: Vec<String> = v["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["targetRef"]["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

#[test]
fn a_service_lists_its_ready_pods_as_endpoints() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    // Two nodes: pods share their node's network, so two replicas declaring port 8080 are
    // never scheduled onto one node.
    c.start_agent("node-a", &token);
    c.start_agent("node-b", &token);
    let deployment = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
       "spec":{"replicas":2,"selector":{"matchLabels":{"app":"web"}},
       "template":{"metadata":{"labels":{"app":"web"}},"spec":{
         "containers":[{"name":"hello","image":"kedge.dev/samples/hello-wasm:v1",
           "ports":[{"name":"http","containerPort":8080}]}]}}}}"#;
    let service = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},
       "spec":{"selector":{"app":"web"},"ports":[{"port":80,"targetPort":"http"}]}}"#;
    for obj in [deployment, service] {
        let r = c.kubectl_stdin(&["create", "-f", "-"], Some(obj));
        assert!(r.ok, "{}", r.stderr);
    }
    let pods = c.wait("2 Running pods", || {
        let p = c.pods("app=web");
        (p.len() == 2 && p.iter().all(|p| p.phase == "Running" && p.ready)).then_some(p)
    });
    let mut want: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    want.sort();
    c.wait("the Endpoints listing both pods", || {
        (endpoint_pods(&c, "web") == want).then_some(())
    });
    let table = c.k(&["get", "endpoints", "web"]);
    assert!(table.contains(":8080"), "{table}");
    // `kubectl describe service` reads the EndpointSlices.
    c.wait("describe service listing both endpoints", || {
        let d = c.k(&["describe", "service", "web"]);
        let line = d.lines().find(|l| l.starts_with("Endpoints:"))?.to_string();
        (line.matches(":8080").count() == 2).then_some(())
    });
    let slices = c.k(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=web",
    ]);
    assert!(
        slices.contains("IPv4") && slices.contains("8080"),
        "{slices}"
    );
    let k = c.k(&["describe", "service", "kubernetes"]);
    assert!(
        k.lines()
            .any(|l| l.starts_with("Endpoints:") && l.contains(":")),
        "{k}"
    );

    // Scaled down: the Endpoints follow.
    c.k(&["scale", "deployment/web", "--replicas=1"]);
    c.wait("the Endpoints down to one pod", || {
        let p = c.pods("app=web");
        let live: Vec<String> = p
            .iter()
            .filter(|p| !p.deleting)
            .map(|p| p.name.clone())
            .collect();
        (live.len() == 1 && endpoint_pods(&c, "web") == live).then_some(())
    });
    // The Service deleted: its Endpoints go too.
    c.k(&["delete", "service", "web"]);
    c.wait("the Endpoints and the slices gone", || {
        let slices = c.k(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "name",
        ]);
        (!c.kubectl(&["get", "endpoints", "web"]).ok && slices.trim().is_empty()).then_some(())
    });
}
