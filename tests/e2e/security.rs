//! A container's `securityContext` and the pod's `hostname`, applied to real OCI containers:
//! `runAsNonRoot` refuses a root image as kubelet does, `allowPrivilegeEscalation: false`
//! sets no_new_privs, `capabilities.drop: [ALL]` leaves none, `readOnlyRootFilesystem` makes
//! `/` read-only, `spec.hostname` names the container's host; what kedge does not apply
//! (`privileged`) is refused by the API, naming the field.

use serde_json::{Value, json};

use crate::harness::{Busybox, Cluster, containers_unavailable};

fn pod_json(c: &Cluster, name: &str) -> Value {
    serde_json::from_str(&c.k(&["get", "pod", name, "-o", "json"])).unwrap_or(Value::Null)
}

fn busybox_pod(name: &str, image: &str, script: &str, pod_sc: Value, sc: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"securityContext": pod_sc, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image, "args": ["sh", "-c", script],
                "securityContext": sc}]}})
}

#[test]
fn security_context_and_hostname_apply_to_oci_containers() {
    if let Some(why) = containers_unavailable() {
        eprintln!("security: SKIPPING: {why}");
        return;
    }
    let mut c = Cluster::start();
    let b = Busybox::start(c.dir.path());
    let token = c.token.clone();
    let registries = b.registries_yaml.display().to_string();
    c.start_agent_with("sec-node", &token, &["--registries-config", &registries]);
    let apply = |obj: &Value| {
        let r = c.kubectl_stdin(&["apply", "-f", "-"], Some(&obj.to_string()));
        assert!(r.ok, "{}", r.stderr);
    };

    apply(&busybox_pod(
        "rootful",
        &b.image,
        "sleep 600",
        json!({"runAsNonRoot": true}),
        json!({}),
    ));
    let script = "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
        touch /probe 2>/dev/null && echo writable || echo read-only; id -u; sleep 600";
    apply(&busybox_pod(
        "restricted",
        &b.image,
        script,
        json!({"runAsNonRoot": true, "runAsUser": 1000}),
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}}),
    ));
    let mut named = busybox_pod(
        "named",
        &b.image,
        "hostname; sleep 600",
        json!({}),
        json!({}),
    );
    named["spec"]["hostname"] = json!("custom-host");
    apply(&named);

    c.wait("the root image refused by runAsNonRoot", || {
        let s = &pod_json(&c, "rootful")["status"]["containerStatuses"][0]["state"]["waiting"];
        (s["reason"] == "CreateContainerConfigError"
            && s["message"] == "container has runAsNonRoot and image will run as root")
            .then_some(())
    });
    let logs = c.wait("the restricted container's report", || {
        let l = c.kubectl(&["logs", "restricted"]);
        (l.ok && l.stdout.lines().count() >= 4).then_some(l.stdout)
    });
    assert!(logs.contains("CapEff:\t0000000000000000"), "{logs}");
    assert!(logs.contains("NoNewPrivs:\t1"), "{logs}");
    assert!(logs.contains("read-only"), "{logs}");
    assert!(logs.lines().any(|l| l == "1000"), "{logs}");
    let logs = c.wait("the named container's hostname", || {
        let l = c.kubectl(&["logs", "named"]);
        (l.ok && !l.stdout.trim().is_empty()).then_some(l.stdout)
    });
    assert_eq!(logs.trim(), "custom-host");

    // The termination message: what the container wrote to terminationMessagePath.
    let mut said = busybox_pod(
        "said",
        &b.image,
        "printf 'bye from said' > /dev/termination-log; exit 3",
        json!({}),
        json!({}),
    );
    said["spec"]["restartPolicy"] = json!("Never");
    apply(&said);
    c.wait("the termination message", || {
        let t = &pod_json(&c, "said")["status"]["containerStatuses"][0]["state"]["terminated"];
        (t["exitCode"] == 3 && t["message"] == "bye from said").then_some(())
    });

    // Privileged containers are not supported: refused, naming the field.
    let r = c.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            &busybox_pod(
                "privileged",
                &b.image,
                "true",
                json!({}),
                json!({"privileged": true}),
            )
            .to_string(),
        ),
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains(
            "spec.containers[0].securityContext.privileged: Forbidden: not supported by kedge"
        ),
        "{}",
        r.stderr
    );
}
