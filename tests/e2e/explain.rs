//! `kubectl explain` from the served OpenAPI v3 schemas, and `kubectl apply` alongside them:
//! server-side validation stays on, and client-side apply computes its strategic merge patch
//! from the schemas' merge keys.

use kedge::core::resources::RESOURCES;

use crate::harness::{Cluster, repo};

#[test]
fn explain_prints_kubernetes_field_docs() {
    let c = Cluster::start();

    let spec = c.k(&["explain", "deployment.spec"]);
    for want in [
        "KIND:       Deployment",
        "FIELD: spec <DeploymentSpec>",
        "replicas\t<integer>",
        "Number of desired pods.",
        "template\t<PodTemplateSpec> -required-",
    ] {
        assert!(spec.contains(want), "{want:?} in:\n{spec}");
    }

    let image = c.k(&["explain", "pod.spec.containers.image"]);
    assert!(image.contains("FIELD: image <string>"), "{image}");
    assert!(image.contains("Container image name."), "{image}");

    let ports = c.k(&["explain", "svc.spec.ports"]);
    for want in [
        "<[]ServicePort>",
        "targetPort\t<IntOrString>",
        "port\t<integer> -required-",
    ] {
        assert!(ports.contains(want), "{want:?} in:\n{ports}");
    }

    let svc = c.k(&["explain", "svc"]);
    assert!(svc.contains("KIND:       Service"), "{svc}");
    // Kubernetes does not require metadata (k8s-openapi's Rust type would).
    assert!(svc.contains("metadata\t<ObjectMeta>\n"), "{svc}");

    let recursive = c.k(&["explain", "deployment", "--recursive"]);
    assert!(recursive.contains("replicas\t<integer>"), "{recursive}");
    assert!(recursive.contains("image\t<string>"), "{recursive}");

    // Every served kind.
    for r in RESOURCES {
        let kind = r.plural;
        let out = c.k(&["explain", kind]);
        assert!(
            out.contains("DESCRIPTION:") && out.contains("metadata\t<ObjectMeta>"),
            "{kind}: {out}"
        );
    }
}

#[test]
fn apply_validates_server_side_and_patches_by_merge_key() {
    let c = Cluster::start();
    let manifest = repo().join("manifests/nginx-deployment.yaml");
    let original = std::fs::read_to_string(&manifest).unwrap();

    // Default validation: no client-side schema check, the server validates (Strict).
    let r = c.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(r.ok && r.stdout.contains("created"), "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);

    // A changed container port: the patch deletes the old port by its merge key, computed
    // from /openapi/v3 (no fallback to /openapi/v2 or kubectl's compiled-in structs).
    let changed = original
        .replace("containerPort: 80", "containerPort: 8080")
        .replace("replicas: 3", "replicas: 2");
    let r = c.kubectl_stdin(&["apply", "-f", "-", "-v=6"], Some(&changed));
    assert!(r.ok && r.stdout.contains("configured"), "{}", r.stderr);
    assert!(!r.stderr.contains("/openapi/v2"), "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let got = c.k(&[
        "get",
        "deployment",
        "nginx-deployment",
        "-o",
        "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[*].containerPort}",
    ]);
    assert_eq!(got, "2 8080");

    // An unknown field is still refused, on create and on update.
    let typo = original.replace(
        "image: nginx:1.14.2",
        "image: nginx:1.14.2\n        imagee: typo",
    );
    for yaml in [typo.clone(), typo.replace("nginx-deployment", "fresh")] {
        let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&yaml));
        assert!(!r.ok, "{}", r.stdout);
        assert!(
            r.stderr.contains(
                "strict decoding error: unknown field \"spec.template.spec.containers[0].imagee\""
            ),
            "{}",
            r.stderr
        );
    }
}
