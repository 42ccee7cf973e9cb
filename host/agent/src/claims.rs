//! PersistentVolumeClaim volumes: a pod's claim is resolved, when a container starts, to the
//! volume bound to it and mounted as that volume's directory — a `hostPath` (created, mode
//! 0777, as local-path-provisioner makes it) or a `local` path (which must exist). A claim
//! being provisioned for this node (the scheduler names the node on the claim before it binds
//! the pod, and the provisioner binds it a moment later) is waited for, as kubelet waits for
//! a pod's volumes; a claim not bound otherwise fails the start with a clear message
//! (CreateContainerConfigError), retried.
//! `readOnly` on the pod's claim makes every mount of it read-only.
//!
//! Clean-up: a local-path volume carries the label `kedge.io/local-path-node=<node>` and the
//! finalizer `kedge.io/local-path-cleanup`; once it is being deleted, the agent of that node
//! removes its directory — only if its reclaim policy is `Delete`: a `Retain` volume's data
//! outlives its object, as in Kubernetes — and then the finalizer (the node may list, watch
//! and update only the volumes so labelled: see the API's node authorizer).
//!
//! Not done: the node keeps no copies of claims and volumes, so a node restarted while the
//! server is unreachable cannot start a pod that mounts a claim until it can ask again.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::client::Client;

/// The finalizer of local-path volumes, held until the directory is gone.
pub(crate) const CLEANUP_FINALIZER: &str = "kedge.io/local-path-cleanup";
/// The label naming the node that holds a local-path volume.
pub(crate) const NODE_LABEL: &str = "kedge.io/local-path-node";
/// How often released local-path volumes are looked for.
const CLEANUP_PERIOD: Duration = Duration::from_secs(3);
/// The longest a container start waits for a claim being provisioned for its node: the
/// provisioner polls every 2 s, so this is several of its rounds (not cancellable: kept short).
const PROVISIONING_WAIT: Duration = Duration::from_secs(10);
/// Written by the scheduler on a claim waiting for its first consumer: that pod's node.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// `pod` with each `persistentVolumeClaim` volume replaced by its bound volume's directory.
pub(crate) async fn resolve(client: &Client, pod: &Value) -> Result<Value, String> {
    let ns = kedge_core::meta::namespace(pod).to_string();
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut pod = pod.clone();
    let Some(volumes) = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
    else {
        return Ok(pod);
    };
    let mut resolved = Vec::with_capacity(volumes.len());
    let mut read_only = Vec::new();
    for v in volumes {
        let Some(claim) = v.get("persistentVolumeClaim") else {
            resolved.push(v);
            continue;
        };
        let vname = v["name"].as_str().unwrap_or_default().to_string();
        let cname = claim["claimName"].as_str().unwrap_or_default();
        let pvc = fetch_claim(client, &ns, cname, &node).await?;
        let source = volume_source_of(client, &pvc, cname).await?;
        if claim["readOnly"].as_bool() == Some(true) {
            read_only.push(vname.clone());
        }
        resolved.push(json!({"name": vname, "hostPath": source}));
    }
    pod["spec"]["volumes"] = Value::Array(resolved);
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in pod["spec"][list].as_array_mut().into_iter().flatten() {
            for m in c["volumeMounts"].as_array_mut().into_iter().flatten() {
                if read_only.iter().any(|n| m["name"].as_str() == Some(n)) {
                    m["readOnly"] = json!(true);
                }
            }
        }
    }
    Ok(pod)
}

/// The claim, once bound if it is being provisioned for `node` (for at most
/// [`PROVISIONING_WAIT`]).
async fn fetch_claim(client: &Client, ns: &str, cname: &str, node: &str) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + PROVISIONING_WAIT;
    loop {
        let pvc = client
            .get(&format!(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims/{cname}"
            ))
            .await
            .map_err(|e| match e.code() {
                Some(404) => format!("persistentvolumeclaim \"{cname}\" not found"),
                _ => format!("persistentvolumeclaim \"{cname}\": {e}"),
            })?;
        if !provisioning_for(&pvc, node) || tokio::time::Instant::now() >= deadline {
            return Ok(pvc);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the claim is not bound yet but its volume is being made for `node`.
fn provisioning_for(pvc: &Value, node: &str) -> bool {
    let bound = pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    let selected = pvc
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SELECTED_NODE))
        .and_then(Value::as_str);
    !bound
        && !node.is_empty()
        && selected == Some(node)
        && pvc["metadata"]["deletionTimestamp"].is_null()
}

/// The `hostPath` source standing for the volume bound to `pvc`.
async fn volume_source_of(client: &Client, pvc: &Value, cname: &str) -> Result<Value, String> {
    let volume = pvc
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty());
    let bound = pvc.pointer("/status/phase").and_then(Value::as_str) == Some("Bound");
    let (Some(volume), true) = (volume, bound) else {
        return Err(format!(
            "persistentvolumeclaim \"{cname}\" is not bound to a volume yet"
        ));
    };
    let pv = client
        .get(&format!("/api/v1/persistentvolumes/{volume}"))
        .await
        .map_err(|e| format!("persistentvolume \"{volume}\" of claim \"{cname}\": {e}"))?;
    plan(&pv)
}

/// The `hostPath` source of a volume, creating a local-path or `DirectoryOrCreate` directory.
pub(crate) fn plan(pv: &Value) -> Result<Value, String> {
    let name = kedge_core::meta::name(pv);
    if let Some(h) = pv.pointer("/spec/hostPath") {
        let path = h["path"].as_str().unwrap_or_default();
        if h["type"].as_str() == Some("DirectoryOrCreate") {
            make_dir(path)
                .map_err(|e| format!("persistentvolume \"{name}\": creating {path}: {e}"))?;
        }
        return Ok(json!({"path": path, "type": "Directory"}));
    }
    if let Some(l) = pv.pointer("/spec/local") {
        let path = l["path"].as_str().unwrap_or_default();
        return Ok(json!({"path": path, "type": "Directory"}));
    }
    Err(format!(
        "persistentvolume \"{name}\": only hostPath and local volumes can be mounted"
    ))
}

fn make_dir(path: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if std::path::Path::new(path).is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
}

/// Removes the directories of this node's deleted local-path volumes, then their finalizer.
pub(crate) async fn cleanup_loop(client: Client, node: String, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(CLEANUP_PERIOD) => {}
        }
        let path = format!("/api/v1/persistentvolumes?labelSelector={NODE_LABEL}%3D{node}");
        let Ok(list) = client.get(&path).await else {
            continue;
        };
        for pv in list["items"].as_array().into_iter().flatten() {
            if let Err(e) = clean(&client, pv).await {
                tracing::debug!(volume = %kedge_core::meta::name(pv), error = %e, "local-path clean-up");
            }
        }
    }
}

/// Whether deleting the volume removes its directory: only one local-path made
/// (`<base>/pvc-<uid>_<ns>_<claim>`) and only when the volume's reclaim policy is `Delete`
/// (Kubernetes keeps a `Retain` volume's storage when its object is deleted, for the admin).
fn removes_dir(pv: &Value) -> bool {
    let name = kedge_core::meta::name(pv);
    let made = pv
        .pointer("/spec/hostPath/path")
        .and_then(Value::as_str)
        .and_then(|d| std::path::Path::new(d).file_name())
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with(&format!("{name}_")));
    let policy = pv
        .pointer("/spec/persistentVolumeReclaimPolicy")
        .and_then(Value::as_str);
    made && policy == Some("Delete")
}

async fn clean(client: &Client, pv: &Value) -> Result<(), String> {
    let finalizers: Vec<Value> = pv["metadata"]["finalizers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if pv["metadata"]["deletionTimestamp"].is_null()
        || !finalizers.iter().any(|f| f == CLEANUP_FINALIZER)
    {
        return Ok(());
    }
    let name = kedge_core::meta::name(pv);
    let dir = pv
        .pointer("/spec/hostPath/path")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if removes_dir(pv) {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing {dir}: {e}")),
        }
    }
    let mut updated = pv.clone();
    updated["metadata"]["finalizers"] = Value::Array(
        finalizers
            .into_iter()
            .filter(|f| f != CLEANUP_FINALIZER)
            .collect(),
    );
    client
        .put(&format!("/api/v1/persistentvolumes/{name}"), &updated)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_become_their_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pvc-u_default_data");
        let pv = json!({"metadata": {"name": "pvc-u"}, "spec": {"hostPath": {
            "path": dir.to_str().unwrap(), "type": "DirectoryOrCreate"}}});
        let src = plan(&pv).unwrap();
        assert_eq!(src["path"], dir.to_str().unwrap());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o777
        );
        let local = json!({"metadata": {"name": "l"}, "spec": {"local": {"path": "/mnt/x"}}});
        assert_eq!(plan(&local).unwrap()["path"], "/mnt/x");
        let nfs = json!({"metadata": {"name": "n"}, "spec": {"nfs": {}}});
        assert!(plan(&nfs).is_err());
    }

    #[test]
    fn a_claim_being_provisioned_for_this_node_is_waited_for() {
        let pvc = |phase: &str, node: Option<&str>| {
            let mut c = json!({"metadata": {"name": "data"}, "status": {"phase": phase}});
            if let Some(n) = node {
                c["metadata"]["annotations"] = json!({SELECTED_NODE: n});
            }
            c
        };
        assert!(provisioning_for(&pvc("Pending", Some("n1")), "n1"));
        assert!(!provisioning_for(&pvc("Bound", Some("n1")), "n1"));
        assert!(!provisioning_for(&pvc("Pending", Some("n2")), "n1"));
        assert!(!provisioning_for(&pvc("Pending", None), "n1"));
    }

    /// Regression: a deleted `Retain` volume lost its directory.
    #[test]
    fn only_deleted_volumes_of_policy_delete_lose_the_directory_local_path_made() {
        let pv = |path: &str, policy: &str| {
            json!({"metadata": {"name": "pvc-u"}, "spec": {"hostPath": {"path": path},
                "persistentVolumeReclaimPolicy": policy}})
        };
        assert!(removes_dir(&pv("/s/pvc-u_default_data", "Delete")));
        assert!(!removes_dir(&pv("/s/pvc-u_default_data", "Retain")));
        assert!(!removes_dir(&pv("/srv/mine", "Delete")));
        assert!(!removes_dir(&pv("/s/pvc-v_default_data", "Delete")));
    }
}
