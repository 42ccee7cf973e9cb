//! The workload and networking kinds served API-side (issue 4): the Kubernetes documentation
//! examples apply unmodified with plain `kubectl apply`, and `get`, `describe`, `scale`,
//! `api-resources` and `delete` behave as against a real cluster. No agent: only the API
//! matters here (their controllers are another issue).

use std::net::Ipv4Addr;

use crate::harness::{Cluster, repo};

const MANIFESTS: &[&str] = &[
    "nginx-deployment.yaml",
    "frontend-replicaset.yaml",
    "web-statefulset.yaml",
    "fluentd-daemonset.yaml",
    "pi-job.yaml",
    "hello-cronjob.yaml",
    "my-service.yaml",
    "service-without-selector.yaml",
    "nginx-replicationcontroller.yaml",
];

fn manifest(name: &str) -> String {
    repo()
        .join("manifests")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

fn json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.k(&a)).unwrap()
}

/// The table line of `name` (first column), split on whitespace runs.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn in_service_cidr(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|ip| ip.octets()[0] == 10 && ip.octets()[1] == 43)
}

/// Applies `yaml` from stdin; returns the kubectl result.
fn apply(c: &Cluster, yaml: &str) -> crate::harness::Kubectl {
    c.kubectl_stdin(&["apply", "-f", "-"], Some(yaml))
}

#[test]
fn documentation_examples_apply_get_describe_and_delete() {
    let c = Cluster::start();

    // The CronJob example runs every minute, and its row is read below (a few seconds after
    // it is created) expecting no run yet: start well clear of a minute boundary.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 45 {
        std::thread::sleep(std::time::Duration::from_secs(61 - into_minute));
    }

    // Every documentation example applies unmodified (server-side validation, Strict).
    for m in MANIFESTS {
        let out = c.k(&["apply", "-f", &manifest(m)]);
        assert!(out.contains("created"), "{m}: {out}");
    }
    // A second apply is a no-op, as against a real cluster (server-filled defaults and
    // allocations are not differences).
    for (m, what) in [
        ("my-service.yaml", "service/my-service unchanged"),
        ("pi-job.yaml", "job.batch/pi unchanged"),
        ("hello-cronjob.yaml", "cronjob.batch/hello unchanged"),
    ] {
        let again = c.k(&["apply", "-f", &manifest(m)]);
        assert!(again.contains(what), "{again}");
    }

    // A Secret written with stringData is stored as base64 data, as kube-apiserver does;
    // a key that cannot be a file name is refused with the field named.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: plain\nstringData:\n  user: admin\n  pass.txt: s3cr=t\n";
    let out = apply(&c, secret);
    assert!(out.ok, "{}", out.stderr);
    let s = json(&c, &["secret", "plain"]);
    assert_eq!(s["type"], "Opaque");
    assert_eq!(
        s["data"],
        serde_json::json!({"user": "YWRtaW4=", "pass.txt": "czNjcj10"})
    );
    assert!(s.get("stringData").is_none(), "{s}");
    let out = apply(&c, &secret.replace("user:", "\"no/slash\":"));
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("data[no/slash]") && out.stderr.contains("a valid config key"),
        "{}",
        out.stderr
    );

    // kubectl get all: category `all`, each kind with its own columns.
    let all = c.k(&["get", "all"]);
    for want in [
        "service/my-service",
        "service/nginx",
        "service/kubernetes",
        "deployment.apps/nginx-deployment",
        "replicaset.apps/frontend",
        "statefulset.apps/web",
        "job.batch/pi",
        "cronjob.batch/hello",
        "replicationcontroller/nginx",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
        "COMPLETIONS",
        "DURATION",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "LAST SCHEDULE",
    ] {
        assert!(all.contains(want), "`get all` lacks {want}:\n{all}");
    }
    assert!(
        !all.contains("endpoints/") && !all.contains("serviceaccount/"),
        "{all}"
    );
    let ds = c.k(&["get", "all", "-n", "kube-system"]);
    assert!(
        ds.contains("daemonset.apps/fluentd-elasticsearch")
            && ds.contains("DESIRED   CURRENT   READY   UP-TO-DATE   AVAILABLE   NODE SELECTOR"),
        "{ds}"
    );
    let r = row(
        &c.k(&["get", "ds", "-n", "kube-system"]),
        "fluentd-elasticsearch",
    );
    assert_eq!(&r[1..7], ["0", "0", "0", "0", "0", "<none>"], "{r:?}");

    // Services: an allocated cluster IP in 10.43/16, None for the headless one.
    let svcs = c.k(&["get", "svc"]);
    assert!(
        svcs.starts_with("NAME") && svcs.contains("TYPE") && svcs.contains("PORT(S)"),
        "{svcs}"
    );
    let my = row(&svcs, "my-service");
    assert_eq!(my[1], "ClusterIP", "{my:?}");
    assert!(in_service_cidr(&my[2]), "{my:?}");
    assert_eq!((my[3].as_str(), my[4].as_str()), ("<none>", "80/TCP"));
    let headless = row(&svcs, "nginx");
    assert_eq!(headless[2], "None", "{headless:?}");
    assert_eq!(row(&svcs, "kubernetes")[2], "10.43.0.1");
    let svc = json(&c, &["svc", "my-service"]);
    let spec = &svc["spec"];
    assert_eq!(spec["clusterIPs"], serde_json::json!([my[2]]));
    assert_eq!(spec["ipFamilies"], serde_json::json!(["IPv4"]));
    assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(spec["ports"][0]["protocol"], "TCP");
    let wide = c.k(&["get", "svc", "my-service", "-o", "wide"]);
    assert!(
        wide.contains("SELECTOR") && wide.contains("app.kubernetes.io/name=MyApp"),
        "{wide}"
    );
    let ep = c.k(&["get", "ep", "my-service-no-selector"]);
    assert!(
        ep.contains("ENDPOINTS") && ep.contains("192.0.2.42:9376"),
        "{ep}"
    );

    // NodePort: a requested port is kept, a missing one allocated in range.
    let np = "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\nspec:\n  type: NodePort\n  selector:\n    app: np\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30080\n  - name: https\n    port: 443\n";
    let r = apply(&c, np);
    assert!(r.ok, "{}", r.stderr);
    let np_row = row(&c.k(&["get", "svc", "np"]), "np");
    let ports = &np_row[4];
    assert!(ports.starts_with("80:30080/TCP,443:"), "{np_row:?}");
    let dynamic: u16 = ports
        .trim_start_matches("80:30080/TCP,443:")
        .trim_end_matches("/TCP")
        .parse()
        .unwrap();
    assert!((30000..=32767).contains(&dynamic), "{dynamic}");

    // Workload defaults and the Job's generated selector.
    let sts = json(&c, &["sts", "web"]);
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(
        sts["spec"]["updateStrategy"],
        serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    // No node in this cluster: the controller's first pod waits unscheduled, none is ready.
    assert_eq!(sts["status"]["readyReplicas"].as_i64().unwrap_or(0), 0);
    let sts_row = row(&c.k(&["get", "sts"]), "web");
    assert_eq!(sts_row[1], "0/3", "{sts_row:?}");
    // Its claim comes from the claim template, Pending: nothing provisions `my-storage-class`.
    let claim = c.wait("the claim www-web-0", || {
        let r = c.kubectl(&["get", "pvc", "www-web-0", "-o", "json"]);
        r.ok.then(|| serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap())
    });
    assert_eq!(claim["spec"]["storageClassName"], "my-storage-class");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(claim["metadata"]["labels"]["app"], "nginx");
    assert_eq!(claim["status"]["phase"], "Pending");
    let job = json(&c, &["job", "pi"]);
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    let labels = &job["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["job-name"], "pi");
    assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
    assert_eq!(labels["controller-uid"], uid);
    assert_eq!(
        (
            &job["spec"]["backoffLimit"],
            &job["spec"]["completions"],
            &job["spec"]["completionMode"]
        ),
        (
            &serde_json::json!(4),
            &serde_json::json!(1),
            &serde_json::json!("NonIndexed")
        )
    );
    let job_row = row(&c.k(&["get", "jobs"]), "pi");
    assert_eq!(&job_row[1..3], ["Running", "0/1"], "{job_row:?}");
    let cj_row = row(&c.k(&["get", "cj"]), "hello");
    assert_eq!(
        &cj_row[1..6],
        ["* * * * *", "<none>", "False", "0", "<none>"],
        "{cj_row:?}"
    );

    // describe works on each kind.
    for (kind, name, ns) in [
        ("svc", "my-service", "default"),
        ("sts", "web", "default"),
        ("ds", "fluentd-elasticsearch", "kube-system"),
        ("job", "pi", "default"),
        ("cronjob", "hello", "default"),
        ("ep", "my-service-no-selector", "default"),
        ("sa", "default", "default"),
    ] {
        let out = c.k(&["describe", kind, name, "-n", ns]);
        assert!(out.contains(name), "describe {kind}: {out}");
    }

    // The scale subresource of a StatefulSet.
    c.k(&["scale", "sts", "web", "--replicas=5"]);
    assert_eq!(json(&c, &["sts", "web"])["spec"]["replicas"], 5);

    // api-resources lists the kinds with their short names.
    let ar = c.k(&["api-resources"]);
    for (short, kind) in [
        ("svc", "Service"),
        ("ep", "Endpoints"),
        ("sa", "ServiceAccount"),
        ("sts", "StatefulSet"),
        ("ds", "DaemonSet"),
        ("cj", "CronJob"),
    ] {
        assert!(
            ar.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&short) && f.last() == Some(&kind)
            }),
            "{short} {kind} missing:\n{ar}"
        );
    }
    assert!(
        ar.contains("controllerrevisions") && ar.contains("jobs"),
        "{ar}"
    );

    // The default ServiceAccount appears in a new namespace, and comes back when deleted.
    c.k(&["create", "namespace", "kinds-ns"]);
    c.wait("the default service account in kinds-ns", || {
        let r = c.kubectl(&["get", "sa", "-n", "kinds-ns"]);
        (r.ok && r.stdout.contains("SECRETS") && r.stdout.contains("default")).then_some(())
    });
    c.k(&["delete", "sa", "default", "-n", "kinds-ns"]);
    c.wait("the default service account recreated", || {
        c.kubectl(&["get", "sa", "default", "-n", "kinds-ns"])
            .ok
            .then_some(())
    });
    assert!(c.k(&["get", "sa", "-n", "kube-system"]).contains("default"));

    // Deleting a namespace: Terminating (no new content) while the namespace controller
    // empties it — a finalizer-held ConfigMap keeps it there — then gone with everything in it.
    apply(
        &c,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: kinds-ns\n  finalizers: [example.com/hold]\n",
    );
    c.k(&[
        "create",
        "deployment",
        "doomed",
        "--image=kedge.dev/samples/hello-wasm:v1",
        "-n",
        "kinds-ns",
    ]);
    c.wait("the doomed deployment's pod", || {
        (!c.k(&["get", "pods", "-n", "kinds-ns", "-o", "name"])
            .trim()
            .is_empty())
        .then_some(())
    });
    let ns = json(&c, &["ns", "kinds-ns"]);
    assert_eq!(
        ns["spec"]["finalizers"],
        serde_json::json!(["kubernetes"]),
        "{ns}"
    );
    c.k(&["delete", "ns", "kinds-ns", "--wait=false"]);
    let ns = json(&c, &["ns", "kinds-ns"]);
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    let r = c.kubectl(&["create", "configmap", "late", "-n", "kinds-ns"]);
    assert!(
        !r.ok && r.stderr.contains("because it is being terminated"),
        "{}",
        r.stderr
    );
    c.wait("the namespace emptied but the held ConfigMap", || {
        let left = c.k(&["get", "all,cm", "-n", "kinds-ns", "-o", "name"]);
        (left.trim() == "configmap/held").then_some(())
    });
    assert!(
        c.kubectl(&["get", "ns", "kinds-ns"]).ok,
        "held by the ConfigMap"
    );
    c.k(&[
        "patch",
        "cm",
        "held",
        "-n",
        "kinds-ns",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    c.wait("the namespace gone", || {
        (!c.kubectl(&["get", "ns", "kinds-ns"]).ok).then_some(())
    });
    let r = c.kubectl(&["delete", "ns", "default"]);
    assert!(!r.ok && r.stderr.contains("protected"), "{}", r.stderr);

    // Invalid writes: 422 with Kubernetes' field paths, and nothing stored.
    let bad_svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - name: a\n    port: 70000\n  - name: a\n    port: 81\n";
    let r = apply(&c, bad_svc);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("The Service \"bad\" is invalid")
            && r.stderr.contains(
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
            )
            && r.stderr
                .contains("spec.ports[1].name: Duplicate value: \"a\""),
        "{}",
        r.stderr
    );
    assert!(!c.kubectl(&["get", "svc", "bad"]).ok);
    let bad_sts = "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: bad\nspec:\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: other\n    spec:\n      containers:\n      - name: c\n        image: nginx:1.14.2\n";
    let r = apply(&c, bad_sts);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("The StatefulSet \"bad\" is invalid")
            && r.stderr.contains("spec.serviceName: Required value")
            && r.stderr.contains(
                "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
            ),
        "{}",
        r.stderr
    );
    assert!(!c.kubectl(&["get", "sts", "bad"]).ok);
    let bad_cj = "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: bad\nspec:\n  schedule: \"every minute\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: c\n            image: busybox:1.28\n";
    let r = apply(&c, bad_cj);
    assert!(
        !r.ok
            && r.stderr.contains(
                "spec.schedule: Invalid value: \"every minute\": expected exactly 5 fields, found 2: [every minute]"
            ),
        "{}",
        r.stderr
    );
    assert!(!c.kubectl(&["get", "cj", "bad"]).ok);

    // Cluster IPs and node ports: requested values must be in range and free; a delete frees
    // them; clusterIP is immutable.
    let fixed = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  type: NodePort\n  clusterIP: 10.43.0.50\n  ports:\n  - port: 80\n    nodePort: 30050\n"
        )
    };
    let r = apply(&c, &fixed("fixed"));
    assert!(r.ok, "{}", r.stderr);
    let r = apply(&c, &fixed("fixed2"));
    assert!(
        !r.ok
            && r.stderr.contains("spec.clusterIPs: Invalid value: []string{\"10.43.0.50\"}: failed to allocate IP 10.43.0.50: provided IP is already allocated")
            && r.stderr.contains("spec.ports[0].nodePort: Invalid value: 30050: provided port is already allocated"),
        "{}",
        r.stderr
    );
    let r = apply(&c, &fixed("fixed2").replace("10.43.0.50", "10.99.0.1"));
    assert!(
        !r.ok && r.stderr.contains("The range of valid IPs is 10.43.0.0/16"),
        "{}",
        r.stderr
    );
    let r = c.kubectl(&[
        "patch",
        "svc",
        "fixed",
        "-p",
        "{\"spec\":{\"clusterIP\":\"10.43.0.51\"}}",
    ]);
    assert!(
        !r.ok
            && r.stderr.contains(
                "spec.clusterIPs[0]: Invalid value: []string{\"10.43.0.51\"}: may not change once set"
            ),
        "{}",
        r.stderr
    );
    c.k(&["delete", "svc", "fixed"]);
    let r = apply(&c, &fixed("fixed2"));
    assert!(r.ok, "the freed IP and port are reusable: {}", r.stderr);
    let f2 = row(&c.k(&["get", "svc", "fixed2"]), "fixed2");
    assert_eq!(
        (f2[2].as_str(), f2[4].as_str()),
        ("10.43.0.50", "80:30050/TCP")
    );

    // kubectl delete -f removes everything it applied. (`--ignore-not-found`: as in
    // Kubernetes, the endpoints controller deletes a deleted Service's Endpoints itself, so
    // the manual Endpoints may be gone before kubectl gets to them.)
    for m in MANIFESTS {
        c.k(&[
            "delete",
            "-f",
            &manifest(m),
            "--wait=true",
            "--ignore-not-found",
        ]);
    }
    let all = c.k(&["get", "all", "-A"]);
    for gone in [
        "service/my-service ",
        "service/nginx ",
        "deployment.apps/nginx-deployment",
        "replicaset.apps/frontend ",
        "statefulset.apps/web",
        "daemonset.apps/fluentd-elasticsearch",
        "job.batch/pi",
        "cronjob.batch/hello",
    ] {
        assert!(!all.contains(gone), "{gone} still listed:\n{all}");
    }
    assert!(!c.kubectl(&["get", "ep", "my-service-no-selector"]).ok);
    // As in Kubernetes, a StatefulSet's claims outlive it.
    assert!(c.kubectl(&["get", "pvc", "www-web-0"]).ok);
}

/// ReplicationController, the older kind: its plugin keeps the replicas (running on an agent),
/// `kubectl scale rc` works through the scale subresource, and deletion takes the pods along.
#[test]
fn replication_controllers_keep_their_pods() {
    let mut c = Cluster::start();
    let token = c.token.clone();
    c.start_agent("rc-node", &token);
    let rc = r#"apiVersion: v1
kind: ReplicationController
metadata:
  name: hello
spec:
  replicas: 2
  template:
    metadata:
      labels: {app: hello-rc}
    spec:
      containers:
      - name: hello
        image: kedge.dev/samples/hello-wasm:v1
"#;
    let out = apply(&c, rc);
    assert!(out.ok, "{}", out.stderr);
    // The selector defaulted from the template, as kube-apiserver does.
    let stored = json(&c, &["rc", "hello"]);
    assert_eq!(stored["spec"]["selector"]["app"], "hello-rc");
    c.wait("2 running pods of the rc", || {
        let pods = c.pods("app=hello-rc");
        (pods.len() == 2 && pods.iter().all(|p| p.phase == "Running")).then_some(())
    });
    let r = row(&c.k(&["get", "rc"]), "hello");
    assert_eq!(&r[1..4], ["2", "2", "2"], "{r:?}");
    let scaled = c.kubectl(&["scale", "rc", "hello", "--replicas=1"]);
    assert!(scaled.ok, "{}", scaled.stderr);
    c.wait("1 pod after scaling down", || {
        let pods = c.pods("app=hello-rc");
        (pods.iter().filter(|p| !p.deleting).count() == 1).then_some(())
    });
    // A pod whose labels drift away is released and replaced.
    let victim = c
        .pods("app=hello-rc")
        .into_iter()
        .find(|p| !p.deleting)
        .unwrap();
    let relabel = c.kubectl(&["label", "pod", &victim.name, "app=elsewhere", "--overwrite"]);
    assert!(relabel.ok, "{}", relabel.stderr);
    c.wait("a replacement pod", || {
        let pods = c.pods("app=hello-rc");
        (pods
            .iter()
            .filter(|p| !p.deleting && p.name != victim.name)
            .count()
            == 1)
            .then_some(())
    });
    let released = json(&c, &["pod", &victim.name]);
    assert!(
        released["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{released}"
    );
    // Invalid: a selector the template does not match.
    let bad = rc
        .replace(
            "  replicas: 2\n",
            "  replicas: 2\n  selector: {app: other}\n",
        )
        .replace("name: hello\n", "name: bad\n");
    let out = apply(&c, &bad);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("spec.template.metadata.labels"),
        "{}",
        out.stderr
    );
    let deleted = c.kubectl(&["delete", "rc", "hello"]);
    assert!(deleted.ok, "{}", deleted.stderr);
    c.wait("the rc's pods gone", || {
        c.pods("app=hello-rc").is_empty().then_some(())
    });
}

/// Secrets and ConfigMaps validated as kube-apiserver validates them, seen through kubectl:
/// an immutable object refuses data changes (its labels still change, and it deletes), a
/// Secret keeps its type, and the well-known Secret types need their keys. A refused write
/// stores nothing.
#[test]
fn immutable_and_typed_secrets_and_config_maps() {
    let c = Cluster::start();
    let refused = |args: &[&str], want: &str| {
        let out = c.kubectl(args);
        assert!(!out.ok, "kubectl {args:?} succeeded: {}", out.stdout);
        assert!(
            out.stderr.contains(want),
            "kubectl {args:?}: {}",
            out.stderr
        );
    };
    const WHY: &str = "Forbidden: field is immutable when `immutable` is set";

    c.k(&["create", "configmap", "frozen", "--from-literal=a=1"]);
    c.k(&[
        "patch",
        "configmap",
        "frozen",
        "-p",
        r#"{"immutable":true}"#,
    ]);
    refused(
        &[
            "patch",
            "configmap",
            "frozen",
            "-p",
            r#"{"data":{"a":"2"}}"#,
        ],
        &format!("The ConfigMap \"frozen\" is invalid: data: {WHY}"),
    );
    refused(
        &[
            "patch",
            "configmap",
            "frozen",
            "-p",
            r#"{"immutable":false}"#,
        ],
        &format!("The ConfigMap \"frozen\" is invalid: immutable: {WHY}"),
    );
    c.k(&["label", "configmap", "frozen", "tier=web"]);
    let cm = json(&c, &["configmap", "frozen"]);
    assert_eq!(cm["data"], serde_json::json!({"a": "1"}), "{cm}");
    assert_eq!(cm["immutable"], true, "{cm}");
    assert_eq!(cm["metadata"]["labels"]["tier"], "web", "{cm}");
    c.k(&["delete", "configmap", "frozen"]);

    c.k(&[
        "create",
        "secret",
        "generic",
        "locked",
        "--from-literal=k=v",
    ]);
    refused(
        &[
            "patch",
            "secret",
            "locked",
            "-p",
            r#"{"type":"kubernetes.io/basic-auth"}"#,
        ],
        "type: Invalid value: \"kubernetes.io/basic-auth\": field is immutable",
    );
    c.k(&["patch", "secret", "locked", "-p", r#"{"immutable":true}"#]);
    refused(
        &[
            "patch",
            "secret",
            "locked",
            "-p",
            r#"{"stringData":{"k":"w"}}"#,
        ],
        &format!("The Secret \"locked\" is invalid: data: {WHY}"),
    );
    let s = json(&c, &["secret", "locked"]);
    assert_eq!(s["data"], serde_json::json!({"k": "dg=="}), "{s}");
    assert_eq!(s["type"], "Opaque", "{s}");

    // Typed Secrets (kubectl create sends these as protobuf).
    let crt = c.dir.path().join("tls.crt");
    std::fs::write(&crt, "CERT").unwrap();
    refused(
        &[
            "create",
            "secret",
            "generic",
            "half",
            "--type=kubernetes.io/tls",
            &format!("--from-file=tls.crt={}", crt.display()),
        ],
        "Secret \"half\" is invalid: data[tls.key]: Required value",
    );
    assert!(!c.kubectl(&["get", "secret", "half"]).ok);
    refused(
        &[
            "create",
            "secret",
            "generic",
            "pull",
            "--type=kubernetes.io/dockerconfigjson",
            r#"--from-literal=.dockerconfigjson={"auths":"#,
        ],
        "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": \
         not a JSON object: EOF while parsing a value",
    );
    refused(
        &[
            "create",
            "secret",
            "generic",
            "ssh",
            "--type=kubernetes.io/ssh-auth",
        ],
        "data[ssh-privatekey]: Required value",
    );
    c.k(&[
        "create",
        "secret",
        "generic",
        "ssh",
        "--type=kubernetes.io/ssh-auth",
        "--from-literal=ssh-privatekey=KEY",
    ]);
    c.k(&[
        "create",
        "secret",
        "generic",
        "basic",
        "--type=kubernetes.io/basic-auth",
        "--from-literal=username=u",
    ]);
}
