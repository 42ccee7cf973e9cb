"""Drives custom resources with the official Python `kubernetes` client, unmodified: a
CustomResourceDefinition through ApiextensionsV1Api, then CustomObjectsApi create, get, list,
watch, patch, status, the second version, a 422 with field paths, and delete. Run by
tests/e2e/crd.rs with the admin kubeconfig as the only argument."""

import json
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

GROUP = "py.kedge.dev"
NS = "default"


def wait_for(what, fn, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def version(name, storage):
    return {
        "name": name,
        "served": True,
        "storage": storage,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "color": {"type": "string", "default": "red"},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {"seen": {"type": "boolean"}},
                    },
                },
            }
        },
        "subresources": {"status": {}},
    }


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    ext = client.ApiextensionsV1Api()
    objs = client.CustomObjectsApi()

    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "kind": "Gadget", "shortNames": ["gd"]},
            "versions": [version("v1", True), version("v1beta1", False)],
        },
    }
    ext.create_custom_resource_definition(crd)
    got = ext.read_custom_resource_definition(f"gadgets.{GROUP}")
    conds = {c.type: c.status for c in got.status.conditions}
    assert conds.get("Established") == "True", conds
    assert got.status.stored_versions == ["v1"], got.status.stored_versions

    # Watch from now, in a thread, while objects come and go.
    events = []
    lst = objs.list_namespaced_custom_object(GROUP, "v1", NS, "gadgets")
    rv = lst["metadata"]["resourceVersion"]

    def watcher():
        w = watch.Watch()
        for e in w.stream(
            objs.list_namespaced_custom_object,
            GROUP,
            "v1",
            NS,
            "gadgets",
            resource_version=rv,
            timeout_seconds=20,
        ):
            events.append((e["type"], e["object"]["metadata"]["name"]))
            if e["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()

    # Validation: a 422 naming the field.
    try:
        objs.create_namespaced_custom_object(
            GROUP, "v1", NS, "gadgets",
            {"apiVersion": f"{GROUP}/v1", "kind": "Gadget",
             "metadata": {"name": "bad"}, "spec": {"size": 0}},
        )
        raise AssertionError("an invalid gadget was accepted")
    except ApiException as e:
        assert e.status == 422, e
        body = json.loads(e.body)
        fields = [c["field"] for c in body["details"]["causes"]]
        assert fields == ["spec.size"], body

    made = objs.create_namespaced_custom_object(
        GROUP, "v1", NS, "gadgets",
        {"apiVersion": f"{GROUP}/v1", "kind": "Gadget",
         "metadata": {"name": "g1", "labels": {"team": "a"}}, "spec": {"size": 2}},
    )
    assert made["spec"]["color"] == "red", made  # defaulted
    got = objs.get_namespaced_custom_object(GROUP, "v1", NS, "gadgets", "g1")
    assert got["metadata"]["uid"] == made["metadata"]["uid"]
    listed = objs.list_namespaced_custom_object(
        GROUP, "v1", NS, "gadgets", label_selector="team=a"
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == ["g1"], listed
    patched = objs.patch_namespaced_custom_object(
        GROUP, "v1", NS, "gadgets", "g1", {"spec": {"size": 3}}
    )
    assert patched["spec"]["size"] == 3 and patched["metadata"]["generation"] == 2, patched
    st = objs.patch_namespaced_custom_object_status(
        GROUP, "v1", NS, "gadgets", "g1", {"status": {"seen": True}}
    )
    assert st["status"] == {"seen": True}, st
    beta = objs.get_namespaced_custom_object(GROUP, "v1beta1", NS, "gadgets", "g1")
    assert beta["apiVersion"] == f"{GROUP}/v1beta1", beta
    objs.delete_namespaced_custom_object(GROUP, "v1", NS, "gadgets", "g1")
    t.join(30)
    assert not t.is_alive(), "the watch did not end"
    kinds = [e[0] for e in events]
    assert kinds[0] == "ADDED" and kinds[-1] == "DELETED" and "MODIFIED" in kinds, events

    # The definition's deletion removes its objects and then its kind.
    objs.create_namespaced_custom_object(
        GROUP, "v1", NS, "gadgets",
        {"apiVersion": f"{GROUP}/v1", "kind": "Gadget",
         "metadata": {"name": "g2"}, "spec": {"size": 1}},
    )
    ext.delete_custom_resource_definition(f"gadgets.{GROUP}")

    def gone():
        try:
            ext.read_custom_resource_definition(f"gadgets.{GROUP}")
            return False
        except ApiException as e:
            return e.status == 404

    wait_for("the definition to go", gone)
    try:
        objs.list_namespaced_custom_object(GROUP, "v1", NS, "gadgets")
        raise AssertionError("gadgets are still served")
    except ApiException as e:
        assert e.status == 404, e
    print("all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
