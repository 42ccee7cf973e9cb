//! From a pod's container spec and an image's config to what the OCI runtime runs: the argv
//! (Kubernetes' command/args over the image's entrypoint/cmd rules), the environment, and the
//! volume mounts. Pure functions, tested without a runtime.

use std::path::PathBuf;

use serde_json::Value;

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    })
}

/// The argv of a container, as Kubernetes defines it:
/// - `command` replaces the image's entrypoint and drops its cmd;
/// - `args` alone replaces the image's cmd and keeps its entrypoint;
/// - neither runs the image's entrypoint + cmd.
pub(crate) fn oci_argv(
    container: &Value,
    entrypoint: &[String],
    cmd: &[String],
) -> Result<Vec<String>, String> {
    let command = strings(container.get("command"));
    let args = strings(container.get("args"));
    let argv: Vec<String> = match (command, args) {
        (Some(c), a) if !c.is_empty() => c.into_iter().chain(a.unwrap_or_default()).collect(),
        (_, Some(a)) if !a.is_empty() => entrypoint.iter().cloned().chain(a).collect(),
        _ => entrypoint.iter().chain(cmd).cloned().collect(),
    };
    if argv.is_empty() {
        return Err(
            "no command specified: the image has no entrypoint or cmd and the \
                    container sets no command"
                .into(),
        );
    }
    Ok(argv)
}

/// The image's `KEY=value` environment overridden by the container's.
pub(crate) fn merge_env(
    image_env: &[String],
    pod_env: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    for (k, v) in pod_env {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env
}

/// One mount of a container: a host directory bound (OCI) or preopened (Wasm) at
/// `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountPlan {
    pub destination: String,
    pub source: PathBuf,
    pub read_only: bool,
}

/// Where a pod's volume lives on the node, and whether it must be created.
#[derive(Clone, Debug, PartialEq, Eq)]
enum VolumeSource {
    Dir(PathBuf),
    /// A hostPath to create if missing (`DirectoryOrCreate`).
    CreateDir(PathBuf),
    /// A `configMap`, `secret` or `projected` volume: files the agent wrote there, mounted
    /// read-only.
    Projected(PathBuf),
}

/// Where the files of a `configMap`, `secret` or `projected` volume are written; `None` for
/// other volume types. Volumes that may hold Secrets live in memory (the host's /dev/shm), as
/// kubelet keeps them on a tmpfs.
pub(crate) fn projected_dir(dirs: &PodDirs, volume: &Value) -> Option<PathBuf> {
    let name = volume["name"].as_str().unwrap_or_default();
    let base = if volume.get("configMap").is_some() || volume.get("downwardAPI").is_some() {
        &dirs.disk
    } else if volume.get("secret").is_some() || volume.get("projected").is_some() {
        &dirs.memory
    } else {
        return None;
    };
    Some(base.join("volumes").join(name))
}

/// The node-local directories of one pod's volumes.
#[derive(Clone, Debug)]
pub(crate) struct PodDirs {
    /// emptyDir volumes (and the containers' logs).
    pub disk: PathBuf,
    /// emptyDir volumes with `medium: Memory`: under the host's /dev/shm (a tmpfs), so all the
    /// pod's containers share them, as in Kubernetes.
    pub memory: PathBuf,
}

impl PodDirs {
    /// Creates the pod's directories, or narrows their modes: only the agent's user may enter
    /// them or their parents (kubelet keeps its pods dir root-only). The volumes inside keep
    /// their own modes, and the files theirs (`defaultMode`), for the containers that mount
    /// them.
    pub fn prepare(&self) -> std::io::Result<()> {
        for root in [&self.disk, &self.memory] {
            if let Some(parent) = root.parent() {
                kedge_store::fsmode::private_dir(parent)?;
            }
            kedge_store::fsmode::private_dir(root)?;
            kedge_store::fsmode::private_dir(&root.join("volumes"))?;
        }
        Ok(())
    }
}

fn volume_source(dirs: &PodDirs, volume: &Value) -> Result<VolumeSource, String> {
    let name = volume["name"].as_str().unwrap_or_default();
    if let Some(dir) = projected_dir(dirs, volume) {
        return Ok(VolumeSource::Projected(dir));
    }
    if let Some(e) = volume.get("emptyDir") {
        let base = if e["medium"].as_str() == Some("Memory") {
            &dirs.memory
        } else {
            &dirs.disk
        };
        return Ok(VolumeSource::CreateDir(base.join("volumes").join(name)));
    }
    if let Some(h) = volume.get("hostPath") {
        let path = h["path"].as_str().unwrap_or_default();
        if !path.starts_with('/') {
            return Err(format!(
                "volume {name:?}: hostPath {path:?} is not absolute"
            ));
        }
        let path = PathBuf::from(path);
        return match h["type"].as_str().unwrap_or("") {
            "" => Ok(VolumeSource::Dir(path)),
            want @ ("Directory" | "File" | "Socket" | "CharDevice" | "BlockDevice") => {
                // kubelet's hostPath type check.
                use std::os::unix::fs::FileTypeExt as _;
                let md = std::fs::metadata(&path).map_err(|_| {
                    format!(
                        "volume {name:?}: hostPath type check failed: {} does not exist",
                        path.display()
                    )
                })?;
                let t = md.file_type();
                let is = match want {
                    "Directory" => t.is_dir(),
                    "File" => t.is_file(),
                    "Socket" => t.is_socket(),
                    "CharDevice" => t.is_char_device(),
                    _ => t.is_block_device(),
                };
                if is {
                    Ok(VolumeSource::Dir(path))
                } else {
                    Err(format!(
                        "volume {name:?}: hostPath type check failed: {} is not a {want}",
                        path.display()
                    ))
                }
            }
            "DirectoryOrCreate" => Ok(VolumeSource::CreateDir(path)),
            other => Err(format!(
                "volume {name:?}: hostPath type {other:?} is not supported by kedge"
            )),
        };
    }
    let kind = volume
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "name").cloned())
        .unwrap_or_else(|| "(none)".into());
    Err(format!(
        "volume {name:?}: volume type {kind:?} is not supported by kedge yet (emptyDir, \
         hostPath, configMap, secret and projected are)"
    ))
}

/// The mounts of `container`, from its `volumeMounts` and the pod's `volumes`. Directories of
/// emptyDir volumes and `DirectoryOrCreate` hostPaths are created; `configMap`, `secret` and
/// `projected` volumes must have been written (their `subPath` may name a file).
pub fn mounts(pod: &Value, container: &Value, dirs: &PodDirs) -> Result<Vec<MountPlan>, String> {
    let volumes = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let vname = m["name"].as_str().unwrap_or_default();
        let destination = m["mountPath"].as_str().unwrap_or_default().to_string();
        if !destination.starts_with('/') {
            return Err(format!(
                "volumeMount {vname:?}: mountPath {destination:?} is not absolute"
            ));
        }
        let mut read_only = m["readOnly"].as_bool().unwrap_or(false);
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(vname))
            .ok_or_else(|| format!("volumeMount {vname:?}: the pod has no such volume"))?;
        let sub = m["subPath"].as_str().unwrap_or("");
        if sub.starts_with('/') || sub.split('/').any(|c| c == "..") {
            return Err(format!(
                "volumeMount {vname:?}: subPath {sub:?} must be relative and stay inside the volume"
            ));
        }
        let (dir, create) = match volume_source(dirs, volume)? {
            VolumeSource::CreateDir(d) => (d, true),
            VolumeSource::Dir(d) => (d, false),
            VolumeSource::Projected(d) => {
                // Always read-only, as in Kubernetes: the agent owns these files.
                read_only = true;
                let source = if sub.is_empty() { d } else { d.join(sub) };
                if !source.exists() {
                    return Err(format!(
                        "volumeMount {vname:?}: {} does not exist in the volume",
                        if sub.is_empty() { "the directory" } else { sub }
                    ));
                }
                // A subPath is bound where its links lead now, into the volume's current
                // timestamped directory: as in Kubernetes, it keeps this content when the
                // volume is updated (only the whole directory, bound as one, follows updates).
                let source = if sub.is_empty() {
                    source
                } else {
                    std::fs::canonicalize(&source)
                        .map_err(|e| format!("volumeMount {vname:?}: subPath {sub:?}: {e}"))?
                };
                out.push(MountPlan {
                    destination,
                    source,
                    read_only,
                });
                continue;
            }
        };
        let source = if sub.is_empty() { dir } else { dir.join(sub) };
        if create || !sub.is_empty() {
            std::fs::create_dir_all(&source)
                .map_err(|e| format!("creating {}: {e}", source.display()))?;
        }
        out.push(MountPlan {
            destination,
            source,
            read_only,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let ep = s(&["/entry"]);
        let cmd = s(&["--default"]);
        assert_eq!(
            oci_argv(&json!({}), &ep, &cmd).unwrap(),
            s(&["/entry", "--default"])
        );
        assert_eq!(
            oci_argv(&json!({"args": ["x"]}), &ep, &cmd).unwrap(),
            s(&["/entry", "x"])
        );
        assert_eq!(
            oci_argv(&json!({"command": ["sh"]}), &ep, &cmd).unwrap(),
            s(&["sh"])
        );
        assert_eq!(
            oci_argv(
                &json!({"command": ["sh"], "args": ["-c", "true"]}),
                &ep,
                &cmd
            )
            .unwrap(),
            s(&["sh", "-c", "true"])
        );
        assert!(oci_argv(&json!({}), &[], &[]).is_err());
    }

    #[test]
    fn pod_env_overrides_image_env() {
        let env = merge_env(
            &s(&["PATH=/bin", "A=1", "EMPTY"]),
            vec![("A".into(), "2".into())],
        );
        assert_eq!(
            env,
            vec![
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new()),
                ("A".into(), "2".into())
            ]
        );
    }

    /// Regression (hardening issue, finding 3): Secret volumes lived under world-readable
    /// parents (`/dev/shm/kedge/<uid>`). The pod's directories and their parents are 0700.
    #[test]
    fn pod_dirs_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let shm = dir.path().join("shm/kedge");
        std::fs::create_dir_all(&shm).unwrap();
        std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dirs = PodDirs {
            disk: dir.path().join("pods/ns_p_uid"),
            memory: shm.join("uid"),
        };
        dirs.prepare().unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for p in [
            dir.path().join("pods"),
            dirs.disk.clone(),
            dirs.disk.join("volumes"),
            shm.clone(),
            dirs.memory.clone(),
            dirs.memory.join("volumes"),
        ] {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
        }
    }

    #[test]
    fn volumes_become_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-data");
        let pod = json!({"spec": {"volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
            {"name": "data", "hostPath": {"path": host.to_str().unwrap(), "type": "DirectoryOrCreate"}},
            {"name": "cm", "configMap": {"name": "x"}},
        ]}});
        let c = json!({"volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "mem", "mountPath": "/mem"},
            {"name": "data", "mountPath": "/data", "readOnly": true, "subPath": "sub"},
        ]});
        let pod_dir = dir.path().join("pod");
        let dirs = PodDirs {
            disk: pod_dir.clone(),
            memory: dir.path().join("shm"),
        };
        let m = mounts(&pod, &c, &dirs).unwrap();
        assert_eq!(
            m,
            vec![
                MountPlan {
                    destination: "/scratch".into(),
                    source: pod_dir.join("volumes/scratch"),
                    read_only: false
                },
                MountPlan {
                    destination: "/mem".into(),
                    source: dir.path().join("shm/volumes/mem"),
                    read_only: false
                },
                MountPlan {
                    destination: "/data".into(),
                    source: host.join("sub"),
                    read_only: true
                },
            ]
        );
        assert!(pod_dir.join("volumes/scratch").is_dir());
        assert!(dir.path().join("shm/volumes/mem").is_dir());
        assert!(host.join("sub").is_dir());

        let bad = json!({"volumeMounts": [{"name": "nfs", "mountPath": "/nfs"}]});
        let e = mounts(&pod, &bad, &dirs).unwrap_err();
        assert!(e.contains("nfs"), "{e}");
        // A configMap volume is mounted read-only from where its files were written; a
        // subPath names one of them.
        let cm = json!({"volumeMounts": [{"name": "cm", "mountPath": "/cm"},
            {"name": "cm", "mountPath": "/etc/app.conf", "subPath": "app.conf"}]});
        assert!(
            mounts(&pod, &cm, &dirs)
                .unwrap_err()
                .contains("does not exist")
        );
        let cm_dir = projected_dir(&dirs, &json!({"name": "cm", "configMap": {}})).unwrap();
        std::fs::create_dir_all(&cm_dir).unwrap();
        std::fs::write(cm_dir.join("app.conf"), "a=1").unwrap();
        let m = mounts(&pod, &cm, &dirs).unwrap();
        assert_eq!(m[0].source, pod_dir.join("volumes/cm"));
        assert_eq!(
            m[1].source,
            pod_dir.join("volumes/cm/app.conf").canonicalize().unwrap()
        );
        assert!(m.iter().all(|m| m.read_only));
        let missing = json!({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]});
        assert!(mounts(&pod, &missing, &dirs).is_err());
        let escape =
            json!({"volumeMounts": [{"name": "scratch", "mountPath": "/x", "subPath": "../.."}]});
        assert!(mounts(&pod, &escape, &dirs).is_err());
    }
}
