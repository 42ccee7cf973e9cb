"""Drives kedge with the official Python `kubernetes` client, unmodified: create, list, watch,
patch and delete of a Deployment and a Pod. Run by tests/e2e/python.rs with the admin
kubeconfig as the only argument; exits non-zero (with a traceback) on the first mismatch."""

import sys
import time

from kubernetes import client, config, watch

NS = "py-client"


def wait_for(what, fn, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    names = [n.metadata.name for n in core.list_namespace().items]
    assert NS in names, names

    # --- Deployment: create, list, watch, patch, read, delete.
    labels = {"app": "py-hello"}
    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-hello", labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="hello", image="kedge.dev/samples/hello-wasm:v1"
                        )
                    ]
                ),
            ),
        ),
    )
    created = apps.create_namespaced_deployment(NS, dep)
    assert created.metadata.uid, created
    assert created.spec.strategy.type == "RollingUpdate", created.spec.strategy

    listed = apps.list_namespaced_deployment(NS, label_selector="app=py-hello")
    assert [d.metadata.name for d in listed.items] == ["py-hello"], listed
    rv = listed.metadata.resource_version

    # A watch from the list's resourceVersion sees the controller's status updates.
    w = watch.Watch()
    seen = []
    for event in w.stream(
        apps.list_namespaced_deployment,
        NS,
        resource_version=rv,
        timeout_seconds=60,
    ):
        obj = event["object"]
        seen.append(event["type"])
        if obj.status and (obj.status.ready_replicas or 0) == 2:
            w.stop()
    assert "MODIFIED" in seen, seen

    patched = apps.patch_namespaced_deployment(
        "py-hello", NS, {"spec": {"replicas": 3}, "metadata": {"labels": {"tier": "py"}}}
    )
    assert patched.spec.replicas == 3 and patched.metadata.labels["tier"] == "py", patched

    scale = apps.read_namespaced_deployment_scale("py-hello", NS)
    assert scale.spec.replicas == 3, scale

    wait_for(
        "3 ready replicas",
        lambda: (apps.read_namespaced_deployment("py-hello", NS).status.ready_replicas or 0)
        == 3,
    )
    pods = core.list_namespaced_pod(NS, label_selector="app=py-hello")
    assert len(pods.items) >= 3, [p.metadata.name for p in pods.items]
    for p in pods.items:
        # Every field the client requires to deserialize is present.
        assert p.status.container_statuses is not None, p.status

    apps.delete_namespaced_deployment(
        "py-hello", NS, body=client.V1DeleteOptions(propagation_policy="Foreground")
    )
    wait_for(
        "the deployment and its pods gone",
        lambda: not apps.list_namespaced_deployment(NS).items
        and not core.list_namespaced_pod(NS, label_selector="app=py-hello").items,
    )

    # --- Pod: create, watch until Running, read log, patch, delete.
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py-pod"}),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="hello",
                    image="kedge.dev/samples/hello-wasm:v1",
                    env=[client.V1EnvVar(name="GREETING", value="py")],
                )
            ]
        ),
    )
    core.create_namespaced_pod(NS, pod)
    w = watch.Watch()
    phase = None
    for event in w.stream(
        core.list_namespaced_pod,
        NS,
        field_selector="metadata.name=py-pod",
        timeout_seconds=60,
    ):
        phase = event["object"].status.phase
        if phase == "Running":
            w.stop()
    assert phase == "Running", phase

    log = wait_for(
        "the pod's log",
        lambda: core.read_namespaced_pod_log("py-pod", NS) or None,
    )
    assert "hello from py-pod" in log, log

    patched = core.patch_namespaced_pod(
        "py-pod", NS, [{"op": "add", "path": "/metadata/labels/extra", "value": "yes"}]
    )
    assert patched.metadata.labels["extra"] == "yes", patched.metadata.labels

    try:
        core.read_namespaced_pod("no-such-pod", NS)
        raise AssertionError("reading a missing pod succeeded")
    except client.exceptions.ApiException as e:
        assert e.status == 404, e

    core.delete_namespaced_pod("py-pod", NS, grace_period_seconds=0)
    wait_for(
        "the pod gone",
        lambda: not core.list_namespaced_pod(NS, field_selector="metadata.name=py-pod").items,
    )
    core.delete_namespace(NS)
    print("python client: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
