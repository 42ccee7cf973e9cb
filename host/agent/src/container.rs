//! One container of a pod, from image to exit, again and again per `restartPolicy`: pull the
//! image (with the pod's imagePullSecrets), decide the runtime by what the image is (Wasm →
//! wasmtime, OCI image → runc; a pod's RuntimeClass admits only its handler's kind, see
//! [`crate::runtime_class`]), run it, report each step in the pod's status and as Events.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::Kind;
use super::objects::{self, ObjRef};
use super::pods::PodRun;
use super::probe::{self, ExecTarget, Handler, Prober, Probes};
use super::status::Termination;
use super::{ContainerId, Ctx, LogHandle, spec};
use kedge_core::{meta, quantity};
use kedge_registry::{Credential, Image, ImageKind, Keyring, PullPolicy, Reference};
use kedge_runtime::oci::{ContainerSpec, Mount, MountSource};
use kedge_runtime::restart::{RestartPolicy, backoff, should_restart};
use kedge_runtime::wasm::Preopen;
use kedge_runtime::wasm::{Exit, RunSpec, Workload};

/// Why a container could not be started, in kubelet's words.
struct Failure {
    /// `ErrImagePull`, `InvalidImageName`, `CreateContainerConfigError`, ...
    reason: String,
    message: String,
    /// An image problem: shown as `ErrImagePull`, then `ImagePullBackOff` while waiting.
    pull: bool,
}

impl Failure {
    fn config(message: impl Into<String>) -> Self {
        Failure {
            reason: "CreateContainerConfigError".into(),
            message: message.into(),
            pull: false,
        }
    }

    fn create(message: impl Into<String>) -> Self {
        Failure {
            reason: "CreateContainerError".into(),
            message: message.into(),
            pull: false,
        }
    }
}

/// What the runtime will run.
enum Prepared {
    Wasm {
        workload: Workload,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dirs: Vec<Preopen>,
    },
    Oci {
        rootfs: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        cwd: String,
        user: Option<String>,
        mounts: Vec<Mount>,
    },
}

/// The credentials the pod's `imagePullSecrets` give for `reference`, in kubelet's order.
/// Secrets are read only from the pod's own namespace; a missing or malformed one is
/// reported as an Event and skipped (kubelet goes on and tries the pull).
async fn pull_credentials(
    ctx: &Ctx,
    pod: &Value,
    c: &str,
    reference: &Reference,
) -> Vec<Credential> {
    let ns = meta::namespace(pod);
    let mut keyring = Keyring::new();
    let names: Vec<String> = pod
        .pointer("/spec/imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(String::from))
        .collect();
    for name in names {
        let r = ObjRef {
            kind: objects::Kind::Secret,
            ns: ns.to_string(),
            name: name.clone(),
        };
        // Through the node's store: an offline node pulling from a reachable registry still
        // has the credentials.
        let problem = match objects::fetch(&ctx.client, &ctx.objects, &r).await {
            Ok(Some(secret)) => match keyring_of(&secret) {
                Ok(k) => {
                    keyring.extend(k);
                    None
                }
                Err(e) => Some(format!("secret {ns}/{name}: {e}")),
            },
            Ok(None) => Some(format!("secret {ns}/{name} not found")),
            Err(e) => Some(e),
        };
        if let Some(problem) = problem {
            ctx.events
                .pod(
                    pod,
                    Some(c),
                    Kind::Warning,
                    "FailedToRetrieveImagePullSecret",
                    &format!(
                        "Unable to retrieve some image pull secrets ({name}); attempting to \
                         pull the image may not succeed: {problem}"
                    ),
                )
                .await;
        }
    }
    keyring.lookup(reference)
}

/// A Keyring from a `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` Secret.
fn keyring_of(secret: &Value) -> Result<Keyring, String> {
    let ty = secret["type"].as_str().unwrap_or("Opaque");
    let (key, json) = match ty {
        "kubernetes.io/dockerconfigjson" => (".dockerconfigjson", true),
        "kubernetes.io/dockercfg" => (".dockercfg", false),
        other => {
            return Err(format!(
                "type {other:?} is not kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg"
            ));
        }
    };
    let data = secret
        .pointer(&format!("/data/{}", key.replace('/', "~1")))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("has no data key {key:?}"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("data {key:?} is not base64: {e}"))?;
    let keyring = if json {
        Keyring::from_dockerconfigjson(&bytes)
    } else {
        Keyring::from_dockercfg(&bytes)
    };
    keyring.map_err(|e| e.to_string())
}

fn pull_policy(c: &Value, reference: &Reference) -> Result<PullPolicy, Failure> {
    match c["imagePullPolicy"].as_str() {
        None | Some("") => Ok(kedge_registry::default_pull_policy(reference)),
        Some(p) => p.parse().map_err(|e: kedge_registry::UnknownPullPolicy| {
            Failure::config(format!("imagePullPolicy: {e}"))
        }),
    }
}

/// Gets the image onto the node (or finds it there), with kubelet's Events.
async fn pull(ctx: &Ctx, pod: &Value, c: &Value) -> Result<Image, Failure> {
    let name = c["name"].as_str().unwrap_or_default();
    let image = c["image"].as_str().unwrap_or_default();
    let reference = Reference::parse(image).map_err(|e| Failure {
        reason: "InvalidImageName".into(),
        message: format!("Failed to apply default image tag {image:?}: {e}"),
        pull: false,
    })?;
    let policy = pull_policy(c, &reference)?;
    let store = ctx.puller.store().clone();
    let lookup = reference.clone();
    let present = tokio::task::spawn_blocking(move || store.image(&lookup))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    // KEP-2535: an image pulled with another pod's credentials is not this pod's to use until
    // it shows its own (then it is not "present" for the offline fallback below either).
    let verifying = ctx.puller.verifies_secret_pulled_images() && present.is_some();
    let mut credentials = Vec::new();
    if policy == PullPolicy::Always || present.is_none() || verifying {
        credentials = pull_credentials(ctx, pod, name, &reference).await;
    }
    let present = present.filter(|img| {
        ctx.puller
            .usable_without_pull(&reference, img, &credentials)
    });
    let will_pull =
        policy == PullPolicy::Always || (present.is_none() && policy != PullPolicy::Never);
    if will_pull {
        ctx.events
            .pod(
                pod,
                Some(name),
                Kind::Normal,
                "Pulling",
                &format!("Pulling image {image:?}"),
            )
            .await;
    }
    let started = Instant::now();
    let pulled = match (
        ctx.puller.ensure(&reference, policy, &credentials).await,
        present,
    ) {
        // Offline autonomy: a node cut off from its registry still runs (and restarts) what
        // it has, even under `Always`; kubelet would stay in back-off until the link returns.
        (Err(e), Some(local)) if e.kind == kedge_registry::PullErrorKind::Network => {
            tracing::info!(%image, error = %e.message, "registry unreachable: using the image on the node");
            let message = format!(
                "Could not reach the registry ({}); using image {image:?} as it is on the node",
                e.message
            );
            ctx.metrics.image(false, true, started.elapsed());
            ctx.events
                .pod(pod, Some(name), Kind::Warning, "Failed", &message)
                .await;
            return Ok(local);
        }
        (pulled, _) => pulled,
    };
    ctx.metrics
        .image(pulled.is_ok(), will_pull, started.elapsed());
    match pulled {
        Ok(img) => {
            let message = if will_pull {
                format!(
                    "Successfully pulled image {image:?} in {:.3}s",
                    started.elapsed().as_secs_f64()
                )
            } else {
                format!("Container image {image:?} already present on machine")
            };
            ctx.events
                .pod(pod, Some(name), Kind::Normal, "Pulled", &message)
                .await;
            Ok(img)
        }
        Err(e) => {
            let message = if e.kind == kedge_registry::PullErrorKind::NeverPull {
                e.message.clone()
            } else {
                format!("Failed to pull image {image:?}: {}", e.message)
            };
            ctx.events
                .pod(pod, Some(name), Kind::Warning, "Failed", &message)
                .await;
            Err(Failure {
                reason: e.reason().to_string(),
                message,
                pull: true,
            })
        }
    }
}

/// Resolves the image and builds everything the runtime needs. Returns also the image's ID for
/// `containerStatuses[].imageID`, its digest (kept from image GC while the container lives)
/// and the volume directories its `subPath` mounts are bound into (kept while it runs).
async fn prepare(
    ctx: &Ctx,
    pod: &Value,
    c: &Value,
    dirs: &spec::PodDirs,
) -> Result<(Prepared, String, Option<String>, objects::Pins), Failure> {
    // Claims become the directories of their volumes (crate::claims).
    let pod = &crate::claims::resolve(&ctx.client, pod)
        .await
        .map_err(Failure::config)?;
    let image = c["image"].as_str().unwrap_or_default();
    // The pod's RuntimeClass, if it names one: its handler decides which images may run.
    let class = crate::runtime_class::resolve(&ctx.client, &ctx.data_dir, pod)
        .await
        .map_err(Failure::create)?;
    let runs = |is_wasm: bool| match &class {
        Some(class) => {
            crate::runtime_class::check_image(class, image, is_wasm).map_err(Failure::create)
        }
        None => Ok(()),
    };
    // The Secrets and ConfigMaps it uses: from the API, or the node's copies while offline.
    let refs = objects::container_refs(pod, c);
    let objects = objects::resolve(&ctx.client, &ctx.objects, refs, objects::Source::Server)
        .await
        .map_err(Failure::config)?;
    let pod_ip = pod_ip(ctx, pod);
    let links = service_links(ctx, pod);
    // A pod with its own network reaches the API server as the `kubernetes` Service, through
    // its node's proxy (the server's own address may be loopback, or behind a NAT); on the
    // node's network, the address the agent itself uses.
    let api = ctx
        .net()
        .pod(meta::uid(pod))
        .and(
            ctx.net()
                .api_service
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
        .unwrap_or_else(|| ctx.api_server.clone());
    let env = crate::env::container_env(
        pod,
        c,
        crate::env::Where {
            node: &ctx.node,
            host_ip: &ctx.host_ip,
            pod_ip: &pod_ip,
            server: &api,
        },
        links,
        &objects,
    )
    .map_err(Failure::config)?;
    let expanded = crate::env::expand_command(c, &env);
    let c = &expanded;
    let (mut mounts, pins) = mount_volumes(ctx, pod, c, dirs, objects)
        .await
        .map_err(Failure::config)?;
    // The ServiceAccount token, unless the container mounts something there itself.
    if let Some(m) = crate::sa_token::mount(ctx, pod, dirs)
        .await
        .map_err(Failure::config)?
        && !mounts.iter().any(|x| x.destination == m.destination)
    {
        mounts.push(m);
    }
    // Wasm guests see volumes as WASI preopened directories.
    let preopens = || -> Vec<Preopen> {
        mounts
            .iter()
            .map(|m| Preopen {
                host_path: m.source.clone(),
                guest_path: m.destination.clone(),
                read_only: m.read_only,
            })
            .collect()
    };
    if let Some(path) = image.strip_prefix("file://") {
        // A local Wasm file, for development.
        use sha2::{Digest, Sha256};
        runs(true)?;
        let bytes = tokio::fs::read(path).await.map_err(|e| Failure {
            reason: "ErrImagePull".into(),
            message: format!("reading {path}: {e}"),
            pull: true,
        })?;
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let workload = ctx
            .runtime
            .load(bytes)
            .await
            .map_err(|e| Failure::create(e.to_string()))?;
        let args = crate::env::container_args(c);
        return Ok((
            Prepared::Wasm {
                workload,
                args,
                env,
                dirs: preopens(),
            },
            id,
            None,
            pins,
        ));
    }
    let img = pull(ctx, pod, c).await?;
    let digest = Some(img.digest.clone());
    match &img.kind {
        ImageKind::Wasm { module } => {
            runs(true)?;
            let workload = load_module(ctx, module).await?;
            let args = crate::env::container_args(c);
            Ok((
                Prepared::Wasm {
                    workload,
                    args,
                    env,
                    dirs: preopens(),
                },
                img.image_id,
                digest,
                pins,
            ))
        }
        ImageKind::Oci { config, .. } => {
            runs(false)?;
            if ctx.oci.is_none() {
                return Err(Failure::create(format!(
                    "image {image:?} is an OCI container image, and this node has no container \
                     runtime (runc not found or not usable): it runs only Wasm images"
                )));
            }
            let args =
                spec::oci_argv(c, &config.entrypoint, &config.cmd).map_err(Failure::create)?;
            let env = spec::merge_env(&config.env, env);
            let cwd = c["workingDir"]
                .as_str()
                .filter(|w| !w.is_empty())
                .map(String::from)
                .or_else(|| config.working_dir.clone())
                .unwrap_or_else(|| "/".into());
            let user = security_user(pod, c).or_else(|| config.user.clone());
            if let Some(why) = non_root_violation(pod, c, user.as_deref()) {
                return Err(Failure::config(why));
            }
            let mut mounts: Vec<Mount> = mounts
                .into_iter()
                .map(|m| Mount {
                    destination: m.destination,
                    source: MountSource::Bind {
                        path: m.source,
                        read_only: m.read_only,
                    },
                })
                .collect();
            // The termination message file: empty at each start, read when the run ends.
            let message_file = termination_file(dirs, c);
            let fresh = message_file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&message_file, b""))
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt as _;
                    // Written by the container's user, whoever that is.
                    std::fs::set_permissions(&message_file, std::fs::Permissions::from_mode(0o666))
                });
            fresh.map_err(|e| {
                Failure::create(format!("creating the termination message file: {e}"))
            })?;
            mounts.push(Mount {
                destination: c["terminationMessagePath"]
                    .as_str()
                    .filter(|p| p.starts_with('/'))
                    .unwrap_or("/dev/termination-log")
                    .to_string(),
                source: MountSource::Bind {
                    path: message_file,
                    read_only: false,
                },
            });
            let store = ctx.puller.store().clone();
            let for_unpack = img.clone();
            let rootfs = tokio::task::spawn_blocking(move || store.rootfs(&for_unpack))
                .await
                .map_err(|e| Failure::create(format!("unpacking the image: {e}")))?
                .map_err(|e| Failure::create(format!("unpacking the image: {e}")))?;
            Ok((
                Prepared::Oci {
                    rootfs,
                    args,
                    env,
                    cwd,
                    user,
                    mounts,
                },
                img.image_id,
                digest,
                pins,
            ))
        }
    }
}

/// Writes the volumes `c` mounts and plans its mounts, with the pod's volumes to itself (see
/// [`objects::Volumes`]): the timestamped directories its `subPath` mounts resolve into are
/// pinned, so that no refresh removes them before the runtime has mounted them.
async fn mount_volumes(
    ctx: &Ctx,
    pod: &Value,
    c: &Value,
    dirs: &spec::PodDirs,
    objects: objects::Objects,
) -> Result<(Vec<spec::MountPlan>, objects::Pins), String> {
    let (pod, c, dirs) = (pod.clone(), c.clone(), dirs.clone());
    let (node, host_ip, pod_ip) = (ctx.node.clone(), ctx.host_ip.clone(), pod_ip(ctx, &pod));
    let uid = meta::uid(&pod).to_string();
    ctx.volumes
        .with_pod(&uid, (ctx.clock)(), move |w| {
            dirs.prepare()
                .map_err(|e| format!("creating the pod's directories: {e}"))?;
            write_volumes(w, &pod, &c, &dirs, &objects, (&node, &host_ip, &pod_ip))?;
            let mounts = spec::mounts(&pod, &c, &dirs)?;
            let pins = w.pin(mounts.iter().map(|m| m.source.as_path()));
            Ok((mounts, pins))
        })
        .await?
}

/// Writes the files of the `configMap`, `secret` and `projected` volumes `c` mounts (those
/// of running pods are kept up to date by [`crate::refresh::refresh_volumes`]).
fn write_volumes(
    w: &mut objects::VolumeWriter,
    pod: &Value,
    c: &Value,
    dirs: &spec::PodDirs,
    objects: &objects::Objects,
    (node, host_ip, pod_ip): (&str, &str, &str),
) -> Result<(), String> {
    let info = crate::downward::PodInfo {
        pod,
        node,
        host_ip,
        pod_ip,
    };
    let mounted: Vec<&str> = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for v in pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or_default();
        if !mounted.contains(&name) {
            continue;
        }
        let (Some(files), Some(dir)) = (
            objects::volume_files(objects, &info, v)
                .map_err(|e| format!("volume {name:?}: {e}"))?,
            spec::projected_dir(dirs, v),
        ) else {
            continue;
        };
        w.write(&dir, &files, true)
            .map_err(|e| format!("volume {name:?}: writing {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Compiles a Wasm module of the image store, or finds it compiled: blobs are named by their
/// verified digest (`blobs/sha256/<hex>`), so a restart neither reads nor hashes them again.
async fn load_module(ctx: &Ctx, module: &std::path::Path) -> Result<Workload, Failure> {
    let digest = module
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|_| {
            module
                .parent()
                .and_then(|p| p.file_name())
                .is_some_and(|a| a == "sha256")
        })
        .map(|h| format!("sha256:{h}"));
    if let Some(w) = digest.as_deref().and_then(|d| ctx.runtime.get(d)) {
        return Ok(w);
    }
    let bytes = tokio::fs::read(module)
        .await
        .map_err(|e| Failure::create(format!("reading {}: {e}", module.display())))?;
    let loaded = match digest {
        Some(d) => ctx.runtime.load_with_digest(bytes, d).await,
        None => ctx.runtime.load(bytes).await,
    };
    loaded.map_err(|e| Failure::create(e.to_string()))
}

/// `securityContext.runAsUser`/`runAsGroup` (container over pod) as `uid[:gid]`.
fn security_user(pod: &Value, c: &Value) -> Option<String> {
    let field = |k: &str| {
        c.pointer(&format!("/securityContext/{k}"))
            .and_then(Value::as_i64)
            .or_else(|| {
                pod.pointer(&format!("/spec/securityContext/{k}"))
                    .and_then(Value::as_i64)
            })
    };
    match (field("runAsUser"), field("runAsGroup")) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, Some(g)) => Some(format!("0:{g}")),
        (None, None) => None,
    }
}

/// A `securityContext` setting, the container's over the pod's.
fn security_setting<'a>(pod: &'a Value, c: &'a Value, key: &str) -> Option<&'a Value> {
    c.pointer(&format!("/securityContext/{key}"))
        .filter(|v| !v.is_null())
        .or_else(|| {
            pod.pointer(&format!("/spec/securityContext/{key}"))
                .filter(|v| !v.is_null())
        })
}

/// kubelet's `runAsNonRoot` check, against the user the container will run as (a uid, a
/// name, `uid:gid`; `None` is root).
fn non_root_violation(pod: &Value, c: &Value, user: Option<&str>) -> Option<String> {
    if security_setting(pod, c, "runAsNonRoot").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    if security_setting(pod, c, "runAsUser").and_then(Value::as_i64) == Some(0) {
        return Some("container's runAsUser breaks non-root policy".into());
    }
    let uid = user
        .map(|u| u.split(':').next().unwrap_or_default().trim())
        .filter(|u| !u.is_empty());
    match uid {
        None | Some("0") | Some("root") => {
            Some("container has runAsNonRoot and image will run as root".into())
        }
        Some(u) if u.parse::<u32>().is_err() => Some(format!(
            "container has runAsNonRoot and image has non-numeric user ({u}), cannot verify \
             user is non-root"
        )),
        Some(_) => None,
    }
}

/// What the OCI runtime applies of the container's `securityContext`.
fn security(pod: &Value, c: &Value) -> kedge_runtime::oci::Security {
    let strings = |ptr: &str| -> Vec<String> {
        c.pointer(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let flag = |key: &str| {
        c.pointer(&format!("/securityContext/{key}"))
            .and_then(Value::as_bool)
    };
    kedge_runtime::oci::Security {
        no_new_privileges: flag("allowPrivilegeEscalation") == Some(false),
        read_only_rootfs: flag("readOnlyRootFilesystem") == Some(true),
        run_as_non_root: security_setting(pod, c, "runAsNonRoot").and_then(Value::as_bool)
            == Some(true),
        add_capabilities: strings("/securityContext/capabilities/add"),
        drop_capabilities: strings("/securityContext/capabilities/drop"),
    }
}

/// Where an OCI container's termination message file lives on the node.
fn termination_file(dirs: &spec::PodDirs, c: &Value) -> PathBuf {
    dirs.disk
        .join(c["name"].as_str().unwrap_or_default())
        .join("termination-log")
}

/// kubelet's termination message: the file at `terminationMessagePath` (OCI: at most 4 KiB),
/// or with `terminationMessagePolicy: FallbackToLogsOnError` and a failed run and no file
/// message, the log's last 80 lines (at most 2 KiB).
async fn termination_message(
    c: &Value,
    dirs: &spec::PodDirs,
    oci: bool,
    code: i32,
    log: &std::path::Path,
) -> Option<String> {
    const FILE_MAX: usize = 4096;
    const LOG_MAX: usize = 2048;
    if oci {
        let bytes = tokio::fs::read(termination_file(dirs, c))
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(FILE_MAX)]).to_string();
        if !text.is_empty() {
            return Some(text);
        }
    }
    if code == 0 || c["terminationMessagePolicy"] != "FallbackToLogsOnError" {
        return None;
    }
    use futures_util::StreamExt as _;
    let opts = kedge_runtime::logs::LogOptions {
        tail_lines: Some(80),
        ..Default::default()
    };
    let mut text = Vec::new();
    let mut stream = std::pin::pin!(kedge_runtime::logs::read(log.to_path_buf(), opts, None));
    while let Some(Ok(chunk)) = stream.next().await {
        text.extend_from_slice(&chunk);
    }
    let tail = &text[text.len().saturating_sub(LOG_MAX)..];
    let tail = String::from_utf8_lossy(tail).to_string();
    (!tail.is_empty()).then_some(tail)
}

/// A container's `lifecycle.postStart` or `lifecycle.preStop` handler.
fn hook(c: &Value, which: &str) -> Result<Option<Handler>, String> {
    let Some(h) = c
        .pointer(&format!("/lifecycle/{which}"))
        .filter(|h| !h.is_null())
    else {
        return Ok(None);
    };
    if let Some(secs) = h.pointer("/sleep/seconds") {
        let secs = secs
            .as_u64()
            .ok_or_else(|| format!("lifecycle.{which}.sleep.seconds must be a whole number"))?;
        return Ok(Some(Handler::Sleep(Duration::from_secs(secs))));
    }
    Handler::of(h)
        .map(Some)
        .map_err(|e| format!("lifecycle.{which}: {e}"))
}

/// How long a postStart hook the agent runs may take.
const POST_START_TIMEOUT: Duration = Duration::from_secs(120);
/// What a container still gets after a slow preStop hook, before KILL (kubelet's 2 s).
const MIN_TERM_GRACE: Duration = Duration::from_secs(2);

/// A lifecycle hook of one run of a container.
struct Hook<'a> {
    ctx: &'a Ctx,
    pod: &'a Value,
    container: &'a Value,
    name: &'a str,
    exec: Option<&'a ExecTarget>,
}

impl Hook<'_> {
    /// Runs `h` within `timeout`; a failure is reported as kubelet's `reason` Event
    /// (`FailedPostStartHook`, `FailedPreStopHook`). Returns whether it succeeded.
    async fn run(&self, h: &Handler, timeout: Duration, reason: &str) -> bool {
        let ip = pod_ip(self.ctx, self.pod);
        let ran = probe::check(h, self.container, &ip, timeout, self.exec);
        let error = match tokio::time::timeout(timeout, ran).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e,
            Err(_) => format!("did not finish within {}s", timeout.as_secs()),
        };
        let message = hook_failure(h, self.name, self.pod, &error);
        self.ctx
            .events
            .pod(self.pod, Some(self.name), Kind::Warning, reason, &message)
            .await;
        false
    }
}

/// The text of kubelet's FailedPostStartHook / FailedPreStopHook Events.
fn hook_failure(h: &Handler, container: &str, pod: &Value, error: &str) -> String {
    let (kind, what) = match h {
        Handler::Exec(argv) => ("Exec", format!("{argv:?}")),
        Handler::Http { path, .. } => ("HTTP", path.clone()),
        Handler::Tcp { port, .. } => ("TCP", format!("{port:?}")),
        Handler::Grpc { port, .. } => ("gRPC", port.to_string()),
        Handler::Sleep(d) => ("Sleep", format!("{}s", d.as_secs())),
    };
    format!(
        "{kind} lifecycle hook ({what}) for Container {container:?} in Pod \"{}_{}({})\" failed - error: {error}",
        meta::name(pod),
        meta::namespace(pod),
        meta::uid(pod)
    )
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// What the node enforces of a container's `resources`, counted exactly as the scheduler
/// counts them (one quantity parser, `kedge_core::quantity`).
#[derive(Debug, PartialEq)]
struct Resources {
    memory_limit: Option<u64>,
    cpu_limit_millis: Option<u64>,
    /// cgroup v1 `cpu.shares`: 1024 per core requested, at least 2 (as kubelet).
    cpu_shares: Option<u64>,
}

impl Resources {
    fn of(c: &Value) -> Self {
        let q = |path: &str| c.pointer(path).and_then(Value::as_str);
        let millis = |path: &str| q(path).and_then(|v| quantity::parse_cpu_millis(v).ok());
        Resources {
            memory_limit: q("/resources/limits/memory").and_then(|v| quantity::parse_bytes(v).ok()),
            cpu_limit_millis: millis("/resources/limits/cpu"),
            cpu_shares: millis("/resources/requests/cpu").map(|m| (m * 1024 / 1000).max(2)),
        }
    }
}

/// Where a container stands in its pod's run.
pub(super) struct Slot {
    /// Its index in the pod's records.
    pub index: usize,
    /// Its restart policy: the pod's for app containers, OnFailure or Never for init
    /// containers, Always for sidecars.
    pub restart: RestartPolicy,
    /// Record how the run ended when it is stopped (a sidecar stopped after the app
    /// containers: its end is part of the pod's status, not the end of the pod).
    pub record_stop: bool,
    /// The pod as last seen in the API: a new image for the container restarts it with
    /// that image (the one part of a pod's containers an update may change).
    pub latest: watch::Receiver<Value>,
}

/// The image of container `name` in `pod`, in `containers` or `initContainers`.
fn image_in(pod: &Value, name: &str) -> Option<String> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .find(|c| c["name"].as_str() == Some(name))
        .and_then(|c| c["image"].as_str())
        .map(String::from)
}

/// Runs the container of `slot` until it is stopped (`cancel`) or, by its restart policy, it
/// is done for good.
pub(super) async fn run_container(
    ctx: &Ctx,
    pod: &Value,
    spec: &Value,
    slot: Slot,
    run: &Arc<PodRun>,
    cancel: CancellationToken,
    grace: watch::Receiver<Duration>,
) {
    let name = spec["name"].as_str().unwrap_or_default().to_string();
    let Slot {
        index: i,
        restart,
        record_stop,
        latest,
    } = slot;
    let mut current = spec.clone();
    let (ns, pod_name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
    let dirs = crate::pods::pod_dirs(ctx, pod);
    let dir = dirs.disk.join(&name);
    let Resources {
        memory_limit,
        cpu_limit_millis,
        cpu_shares,
    } = Resources::of(spec);
    let id: ContainerId = (ns.to_string(), pod_name.to_string(), name.clone());
    let init = pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == name.as_str()));
    let mut setup_failures = 0u32;
    // Continued from the node's record when the agent restarted (see `container_counts`).
    let mut restart_count = run.records.lock().await[i].restart_count;
    let _in_use = InUse::new(ctx, &id);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        // The container as the pod now has it (its image may have been updated).
        if let Some(img) = image_in(&latest.borrow(), &name) {
            current["image"] = Value::String(img);
        }
        let c = &current;
        let image = c["image"].as_str().unwrap_or_default().to_string();
        let prepared = match (hook(c, "postStart"), hook(c, "preStop"), Probes::of(c)) {
            (Ok(post), Ok(pre), Ok(probes)) => prepare(ctx, pod, c, &dirs)
                .await
                .map(|(p, id, digest, pins)| (p, id, digest, pins, post, pre, probes)),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(Failure::config(e)),
        };
        // `_pins` is held to the end of this iteration: the run (and its back-off).
        let (prepared, image_id, digest, _pins, post_start, pre_stop, probes) = match prepared {
            Ok(x) => x,
            Err(f) => {
                setup_failures += 1;
                let wait = backoff(setup_failures.saturating_sub(1));
                tracing::info!(container = %name, reason = %f.reason, message = %f.message, "container cannot start");
                let (reason, message) = (f.reason.clone(), f.message.clone());
                run.update(ctx, i, |r| r.pull_failed(reason, message)).await;
                if f.pull {
                    // kubelet shows ErrImagePull first, then ImagePullBackOff while waiting.
                    if !sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                        return;
                    }
                    let message = format!("Back-off pulling image {image:?}");
                    ctx.events
                        .pod(pod, Some(&name), Kind::Normal, "BackOff", &message)
                        .await;
                    let detail = format!("{message}: {}", f.message);
                    run.update(ctx, i, |r| r.pull_failed("ImagePullBackOff".into(), detail))
                        .await;
                } else {
                    ctx.events
                        .pod(
                            pod,
                            Some(&name),
                            Kind::Warning,
                            "Failed",
                            &format!("Error: {}: {}", f.reason, f.message),
                        )
                        .await;
                }
                if !sleep_or_cancel(wait, &cancel).await {
                    return;
                }
                continue;
            }
        };
        _in_use.set(digest);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            let message = format!("creating {}: {e}", dir.display());
            ctx.metrics
                .container_start_failed(init, "RunContainerError");
            run.update(ctx, i, |r| {
                r.start_failed("RunContainerError".into(), message)
            })
            .await;
            if !sleep_or_cancel(backoff(0), &cancel).await {
                return;
            }
            continue;
        }
        let log_path = dir.join(format!("{restart_count}.log"));
        let run_log = log_path.clone();
        // The log exists before the container is reported Running: `kubectl logs` right
        // after that must read an empty log, not fail because the runtime (still compiling a
        // Wasm module, say) has not opened it yet.
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        {
            let message = format!("creating {}: {e}", log_path.display());
            ctx.metrics
                .container_start_failed(init, "RunContainerError");
            run.update(ctx, i, |r| {
                r.start_failed("RunContainerError".into(), message)
            })
            .await;
            if !sleep_or_cancel(backoff(0), &cancel).await {
                return;
            }
            continue;
        }
        let (done_tx, done_rx) = watch::channel(false);
        // A fresh stdin per run, as a restarted process gets a new one from kubelet, and the
        // run's output for `kubectl attach`.
        let (attach, stdin) = kedge_runtime::stdio::channel(stdio_mode(c));
        let (attach, stdin) = (Some(attach), Some(stdin));
        let memory_gauge = matches!(prepared, Prepared::Wasm { .. })
            .then(kedge_runtime::wasm::MemoryGauge::default);
        let cpu_gauge =
            matches!(prepared, Prepared::Wasm { .. }).then(kedge_runtime::wasm::CpuGauge::default);
        // The pod's own network, if it has one: Wasm instances run on its namespace's
        // runtime, OCI containers join the namespace and get the pod's resolv.conf and hosts.
        let pod_net = ctx.net().pod(uid);
        let wasm_net = match (&pod_net, &prepared) {
            (Some(n), Prepared::Wasm { .. }) => match n.handle() {
                Ok(h) => Some(h),
                Err(e) => {
                    let message = format!("entering the pod's network namespace: {e}");
                    ctx.metrics
                        .container_start_failed(init, "RunContainerError");
                    run.update(ctx, i, |r| {
                        r.start_failed("RunContainerError".into(), message)
                    })
                    .await;
                    if !sleep_or_cancel(backoff(0), &cancel).await {
                        return;
                    }
                    continue;
                }
            },
            _ => None,
        };
        // The pod's /etc/hosts: with its address, or the node's file on its network, and
        // hostAliases either way. OCI containers get it as a file, Wasm ones in their resolver.
        let pod_hosts = || match &pod_net {
            Some(n) => crate::network::hosts_file(pod, n.ip, &ctx.net().cfg.cluster_domain),
            None => crate::network::node_hosts_file(pod),
        };
        // A Wasm container's name lookups follow the pod's hosts file and resolv.conf (by
        // dnsPolicy) when it needs a resolver of its own; otherwise the node's resolver
        // answers, as for the node's processes.
        let wasm_resolver = match &prepared {
            Prepared::Wasm { .. }
                if wasm_needs_resolver(pod, pod_net.is_some(), ctx.net().cluster_dns_serving()) =>
            {
                match ctx.net().resolv_conf(pod) {
                    Ok(text) => Some(Arc::new(
                        kedge_runtime::wasm::Resolver::from_resolv_conf(&text)
                            .with_hosts(&pod_hosts()),
                    )),
                    Err(message) => {
                        ctx.metrics
                            .container_start_failed(init, "CreateContainerConfigError");
                        run.update(ctx, i, |r| {
                            r.start_failed("CreateContainerConfigError".into(), message)
                        })
                        .await;
                        if !sleep_or_cancel(backoff(0), &cancel).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            _ => None,
        };
        // An OCI container's /etc/resolv.conf (by dnsPolicy) and /etc/hosts.
        let etc = match &prepared {
            Prepared::Wasm { .. } => None,
            Prepared::Oci { .. } => match ctx.net().resolv_conf(pod) {
                Ok(resolv) => Some((resolv, pod_hosts())),
                Err(message) => {
                    ctx.metrics
                        .container_start_failed(init, "CreateContainerConfigError");
                    run.update(ctx, i, |r| {
                        r.start_failed("CreateContainerConfigError".into(), message)
                    })
                    .await;
                    if !sleep_or_cancel(backoff(0), &cancel).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let wasm_target = match &prepared {
            Prepared::Wasm {
                workload,
                args,
                env,
                dirs,
            } => Some(Arc::new(super::stream::WasmTarget {
                execs: Arc::new(tokio::sync::Semaphore::new(super::stream::WASM_EXECS)),
                workload: workload.clone(),
                container: kedge_runtime::wasm::ExecSpec {
                    args: args.clone(),
                    env: env.clone(),
                    memory_limit,
                    dirs: dirs.clone(),
                    net: wasm_net.clone(),
                    resolver: wasm_resolver.clone(),
                    cpu_time: cpu_gauge.clone(),
                },
            })),
            Prepared::Oci { .. } => None,
        };
        ctx.logs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            LogHandle {
                uid: uid.to_string(),
                dir: dir.clone(),
                restart_count,
                done: done_rx,
                runc_id: matches!(prepared, Prepared::Oci { .. })
                    .then(|| runc_id(uid, &name, restart_count)),
                wasm: wasm_target.clone(),
                stdin: attach,
                memory: memory_gauge.clone(),
                cpu: cpu_gauge.clone(),
                netns: pod_net.as_ref().map(|n| n.netns.clone()),
            },
        );
        ctx.events
            .pod(
                pod,
                Some(&name),
                Kind::Normal,
                "Created",
                &format!("Created container {name}"),
            )
            .await;
        let started_at = ctx.now();
        let started = Instant::now();
        {
            let (image_id, started_at, image) =
                (image_id.clone(), started_at.clone(), image.clone());
            run.update(ctx, i, move |r| {
                r.image = image;
                r.started(image_id, restart_count, started_at)
            })
            .await;
        }
        ctx.metrics.container_started(init);
        ctx.events
            .pod(
                pod,
                Some(&name),
                Kind::Normal,
                "Started",
                &format!("Started container {name}"),
            )
            .await;
        // runc runs an OCI container's exec hooks itself (`runc exec`); the agent runs every
        // other hook: those of Wasm containers, and httpGet, tcpSocket and sleep ones.
        let oci = matches!(prepared, Prepared::Oci { .. });
        let split = |h: Option<Handler>| match h {
            Some(Handler::Exec(argv)) if oci => (Some(argv), None),
            other => (None, other),
        };
        // postStart always runs in the agent, which then lets the pod's next container start.
        let (agent_post_start, post_start) = (post_start, None);
        let (pre_stop, agent_pre_stop) = split(pre_stop);
        // The run stops when `run_cancel` fires. Asking it to stop (`stop`: the pod stopping,
        // a failed probe or postStart hook) runs the agent's preStop hook first, within the
        // grace period; a failed postStart hook skips it (`no_pre_stop`), as in kubelet.
        let run_cancel = CancellationToken::new();
        let stop = cancel.child_token();
        let no_pre_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let run_grace = Arc::new(watch::Sender::new(*grace.borrow()));
        let exec_target = match (&wasm_target, &ctx.oci) {
            (Some(target), _) => Some(ExecTarget::Wasm {
                target: target.clone(),
                runtime: ctx.runtime.clone(),
            }),
            (None, Some(oci)) => Some(ExecTarget::Oci {
                runc_id: runc_id(uid, &name, restart_count),
                oci: oci.clone(),
            }),
            (None, None) => None,
        };
        let probing = (!probes.is_empty()).then(|| {
            let exec = exec_target
                .clone()
                .expect("an OCI container runs only where runc is");
            let prober = Prober {
                ctx: ctx.clone(),
                pod: pod.clone(),
                container: c.clone(),
                index: i,
                run: run.clone(),
                run_no: restart_count,
                exec,
                started: tokio::time::Instant::now(),
                pod_ip: pod_ip(ctx, pod),
                kill: stop.clone(),
                grace: run_grace.clone(),
            };
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(prober.supervise(probes)))
        });
        // The pod's grace period, as a deletion shortens it, reaches the run's.
        let forward_grace = {
            let (mut pod_grace, run_grace) = (grace.clone(), run_grace.clone());
            async move {
                while pod_grace.changed().await.is_ok() {
                    let g = *pod_grace.borrow_and_update();
                    run_grace.send_replace(g);
                }
                std::future::pending::<()>().await;
            }
        };
        let hooks = Hook {
            ctx,
            pod,
            container: c,
            name: &name,
            exec: exec_target.as_ref(),
        };
        let stopper = async {
            stop.cancelled().await;
            let skip = no_pre_stop.load(std::sync::atomic::Ordering::Relaxed);
            if let (Some(h), false) = (&agent_pre_stop, skip) {
                let grace = *run_grace.borrow();
                let began = Instant::now();
                hooks.run(h, grace, "FailedPreStopHook").await;
                run_grace.send_replace(grace.saturating_sub(began.elapsed()).max(MIN_TERM_GRACE));
            }
            run_cancel.cancel();
            std::future::pending::<()>().await;
        };
        let post_start_hook = async {
            if let Some(h) = &agent_post_start {
                if let Some(ExecTarget::Oci { runc_id, oci }) = &exec_target {
                    let _ = oci.until_running(runc_id).await;
                }
                if !hooks
                    .run(h, POST_START_TIMEOUT, "FailedPostStartHook")
                    .await
                {
                    no_pre_stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    stop.cancel();
                    return std::future::pending::<()>().await;
                }
            }
            // Started, hook and all: the pod's next container may start (kubelet's order).
            run.note(i, move |r| r.post_start_done(restart_count)).await;
            std::future::pending::<()>().await;
        };
        let run_future = async {
            match prepared {
                Prepared::Wasm {
                    workload,
                    args,
                    env,
                    dirs,
                } => {
                    let spec = RunSpec {
                        args,
                        env,
                        log_path,
                        log_rotation: ctx.container_logs,
                        memory_limit,
                        dirs,
                        memory_in_use: memory_gauge.clone(),
                        cpu_time: cpu_gauge.clone(),
                        net: wasm_net.clone(),
                        resolver: wasm_resolver.clone(),
                    };
                    ctx.runtime
                        .run_with_stdin(&workload, spec, stdin, run_cancel.clone())
                        .await
                        .map_err(|e| e.to_string())
                }
                Prepared::Oci {
                    rootfs,
                    args,
                    env,
                    cwd,
                    user,
                    mounts,
                } => {
                    let oci = ctx.oci.as_ref().expect("checked in prepare");
                    let spec = ContainerSpec {
                        id: runc_id(uid, &name, restart_count),
                        image_rootfs: rootfs,
                        work_dir: ctx.containers_dir.join(format!("{uid}-{name}")),
                        args,
                        env,
                        cwd,
                        user,
                        hostname: pod
                            .pointer("/spec/hostname")
                            .and_then(Value::as_str)
                            .filter(|h| !h.is_empty())
                            .unwrap_or(pod_name)
                            .to_string(),
                        mounts,
                        memory_limit,
                        cpu_limit_millis,
                        cpu_shares,
                        log_path,
                        log_rotation: ctx.container_logs,
                        grace_period: run_grace.subscribe(),
                        post_start,
                        pre_stop,
                        security: security(pod, c),
                        netns: pod_net.as_ref().map(|n| n.netns.clone()),
                        resolv_conf: etc.as_ref().map(|e| e.0.clone()),
                        hosts: etc.as_ref().map(|e| e.1.clone()),
                    };
                    let out = oci.run_with_stdin(spec, stdin, run_cancel.clone()).await;
                    if let Err(kedge_runtime::Error::PostStartHook { .. }) = &out {
                        let text = out
                            .as_ref()
                            .err()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        ctx.events
                            .pod(
                                pod,
                                Some(&name),
                                Kind::Warning,
                                "FailedPostStartHook",
                                &text,
                            )
                            .await;
                    }
                    out.map_err(|e| e.to_string())
                }
            }
        };
        // The forwarding comes first, so a deletion's grace period is in place before the run
        // sees the cancellation that comes with it.
        // A new image in the pod: this run stops and the container starts again with it.
        let redefined = std::sync::atomic::AtomicBool::new(false);
        let image_changed = async {
            let mut pods = latest.clone();
            loop {
                if pods.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let now = image_in(&pods.borrow_and_update(), &name);
                if now.is_some_and(|img| img != image) {
                    break;
                }
            }
            ctx.events
                .pod(
                    pod,
                    Some(&name),
                    Kind::Normal,
                    "Killing",
                    &format!("Container {name} definition changed, will be restarted"),
                )
                .await;
            redefined.store(true, std::sync::atomic::Ordering::Relaxed);
            stop.cancel();
            std::future::pending::<()>().await;
        };
        let exit = tokio::select! {
            biased;
            () = forward_grace => unreachable!("pending forever"),
            () = stopper => unreachable!("pending forever"),
            () = post_start_hook => unreachable!("pending forever"),
            () = image_changed => unreachable!("pending forever"),
            exit = run_future => exit,
        };
        drop(probing);
        let _ = done_tx.send(true);
        if cancel.is_cancelled() && !record_stop {
            return;
        }
        let finished_at = ctx.now();
        let (code, reason, message) = match &exit {
            Ok(e) => (
                e.exit_code(),
                e.reason().to_string(),
                match e {
                    Exit::Trapped(why) => Some(why.clone()),
                    _ => None,
                },
            ),
            Err(e) => (128, "Error".to_string(), Some(e.clone())),
        };
        // What the container left in its termination message file, else (with
        // `FallbackToLogsOnError`, after a failure) the end of its log.
        let message = termination_message(c, &dirs, oci, code, &run_log)
            .await
            .or(message);
        tracing::info!(container = %name, pod = %pod_name, code, %reason, "container exited");
        let end = Termination {
            exit_code: code,
            reason,
            message,
            started_at,
            finished_at,
        };
        if cancel.is_cancelled() {
            run.update(ctx, i, move |r| r.exited_for_good(end)).await;
            return;
        }
        if redefined.load(std::sync::atomic::Ordering::Relaxed) && !cancel.is_cancelled() {
            // Restarted at once with its new definition, whatever the restart policy.
            restart_count += 1;
            run.update(ctx, i, move |r| r.exited_to_restart(end, restart_count))
                .await;
            continue;
        }
        if should_restart(restart, code) {
            if kedge_runtime::restart::resets_backoff(started.elapsed()) {
                setup_failures = 0;
            }
            restart_count += 1;
            let wait = backoff(restart_count - 1);
            run.update(ctx, i, move |r| r.exited_to_restart(end, restart_count))
                .await;
            if restart_count > 1 {
                ctx.events
                    .pod(
                        pod,
                        Some(&name),
                        Kind::Warning,
                        "BackOff",
                        &format!("Back-off restarting failed container {name} in pod {pod_name}"),
                    )
                    .await;
            }
            if !sleep_or_cancel(wait, &cancel).await {
                return;
            }
            continue;
        }
        run.update(ctx, i, move |r| r.exited_for_good(end)).await;
        return;
    }
}

/// Whether a Wasm container's name lookups need the pod's own [`kedge_runtime::wasm::Resolver`]
/// rather than the node's (wasmtime-wasi's `getaddrinfo`): with the pod's own network (its
/// resolv.conf and hosts differ from the node's), with `dnsPolicy` `None` or
/// `ClusterFirstWithHostNet` (a resolv.conf of its own), with `hostAliases`, which the
/// node's `/etc/hosts` lacks, or, for a pod that is not `hostNetwork` but shares the node's
/// network (a node without a pod network), `ClusterFirst` while the cluster DNS serves (its
/// OCI containers get the cluster's resolv.conf too). Otherwise the node's resolver is kept,
/// with whatever it knows beyond the hosts file and DNS (nsswitch: `myhostname`, `resolve`,
/// mDNS).
fn wasm_needs_resolver(pod: &Value, own_network: bool, cluster_dns: bool) -> bool {
    let policy = pod.pointer("/spec/dnsPolicy").and_then(Value::as_str);
    // As the agent's hosts file counts them: an address and at least one name.
    let aliases = pod
        .pointer("/spec/hostAliases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|a| {
            a["ip"].is_string()
                && a["hostnames"]
                    .as_array()
                    .is_some_and(|names| names.iter().any(Value::is_string))
        });
    let cluster_first = matches!(policy, None | Some("ClusterFirst"))
        && !crate::network::host_network(pod)
        && cluster_dns;
    own_network
        || matches!(policy, Some("None" | "ClusterFirstWithHostNet"))
        || aliases
        || cluster_first
}

/// The runc container id of one run of a container (unique per restart).
/// The container's `stdin`, `stdinOnce` and `tty`.
fn stdio_mode(c: &Value) -> kedge_runtime::stdio::Mode {
    let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    kedge_runtime::stdio::Mode {
        stdin: flag("stdin"),
        stdin_once: flag("stdinOnce"),
        tty: flag("tty"),
    }
}

fn runc_id(uid: &str, name: &str, restart_count: u32) -> String {
    format!("{uid}-{name}-{restart_count}")
}

/// Marks the image a container uses as in use (image GC keeps it) for as long as the
/// container's loop lives.
struct InUse {
    ctx: Ctx,
    id: ContainerId,
}

impl InUse {
    fn new(ctx: &Ctx, id: &ContainerId) -> Self {
        InUse {
            ctx: ctx.clone(),
            id: id.clone(),
        }
    }

    fn set(&self, digest: Option<String>) {
        let mut m = self
            .ctx
            .images_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match digest {
            Some(d) => {
                m.insert(self.id.clone(), d);
            }
            None => {
                m.remove(&self.id);
            }
        }
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.set(None);
    }
}

/// Keeps the node's image store under its size budget, sparing images of live containers.
pub(super) async fn image_gc_loop(ctx: Ctx, max_bytes: u64, cancel: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(300);
    loop {
        if !sleep_or_cancel(EVERY, &cancel).await {
            return;
        }
        let in_use: std::collections::HashSet<String> = ctx
            .images_in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let store: Arc<kedge_registry::LocalImageStore> = ctx.puller.store().clone();
        match tokio::task::spawn_blocking(move || store.gc(&in_use, max_bytes)).await {
            Ok(Ok(report)) => tracing::debug!(?report, "image gc"),
            Ok(Err(e)) => tracing::warn!(error = %e, "image gc failed"),
            Err(e) => tracing::warn!(error = %e, "image gc task failed"),
        }
    }
}

/// The pod's address: its own network's, or the node's.
fn pod_ip(ctx: &Ctx, pod: &Value) -> String {
    ctx.net()
        .pod(meta::uid(pod))
        .map(|n| n.ip.to_string())
        .unwrap_or_else(|| ctx.host_ip.clone())
}

/// The service environment variables a container gets (`enableServiceLinks`, default on):
/// the Services of its namespace the node knows when it starts.
fn service_links(ctx: &Ctx, pod: &Value) -> Vec<(String, String)> {
    let on = pod
        .pointer("/spec/enableServiceLinks")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !on {
        return Vec::new();
    }
    let services = ctx.net().view.borrow().services_in(meta::namespace(pod));
    kedge_net::svcenv::service_env(&services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// kubelet's runAsNonRoot rule, with the container's setting over the pod's.
    #[test]
    fn run_as_non_root_is_checked_against_the_user() {
        let pod = |sc: Value| json!({"spec": {"securityContext": sc}});
        let c = json!({});
        let on = pod(json!({"runAsNonRoot": true}));
        assert_eq!(non_root_violation(&pod(json!({})), &c, None), None);
        assert_eq!(
            non_root_violation(&on, &c, None).as_deref(),
            Some("container has runAsNonRoot and image will run as root")
        );
        assert_eq!(non_root_violation(&on, &c, Some("1000:1000")), None);
        assert!(
            non_root_violation(&on, &c, Some("nobody"))
                .is_some_and(|m| m.contains("non-numeric user (nobody)"))
        );
        let off = json!({"securityContext": {"runAsNonRoot": false}});
        assert_eq!(
            non_root_violation(&on, &off, None),
            None,
            "the container's wins"
        );
        let root = pod(json!({"runAsNonRoot": true, "runAsUser": 0}));
        assert_eq!(
            non_root_violation(&root, &c, Some("0")).as_deref(),
            Some("container's runAsUser breaks non-root policy")
        );
    }

    /// A Wasm container on the node's network keeps the node's resolver unless the pod's
    /// hosts file or resolv.conf would differ from the node's: `hostAliases` need the pod's
    /// resolver, or they would not resolve as they do in the pod's OCI containers.
    #[test]
    fn wasm_containers_get_a_resolver_when_the_node_s_would_differ() {
        let pod = |spec: Value| json!({"spec": spec});
        let host_net = pod(json!({"hostNetwork": true}));
        assert!(!wasm_needs_resolver(&host_net, false, true));
        assert!(
            wasm_needs_resolver(&host_net, true, false),
            "its own network"
        );
        for policy in ["None", "ClusterFirstWithHostNet"] {
            let p = pod(json!({"hostNetwork": true, "dnsPolicy": policy}));
            assert!(wasm_needs_resolver(&p, false, true), "{policy}");
        }
        for policy in ["Default", "ClusterFirst"] {
            let p = pod(json!({"hostNetwork": true, "dnsPolicy": policy}));
            assert!(!wasm_needs_resolver(&p, false, true), "{policy}");
        }
        let aliased = pod(json!({"hostNetwork": true, "hostAliases": [
            {"ip": "10.1.2.3", "hostnames": ["foo.local"]}]}));
        assert!(wasm_needs_resolver(&aliased, false, false));
        // Entries the hosts file leaves out change nothing.
        let empty = pod(json!({"hostNetwork": true, "hostAliases": [
            {"ip": "10.1.2.3", "hostnames": []}, {"hostnames": ["foo.local"]}]}));
        assert!(!wasm_needs_resolver(&empty, false, true));
        // A pod that is not hostNetwork on a node without a pod network: the cluster's
        // resolv.conf while its DNS serves, as its OCI containers get.
        let fallback = pod(json!({}));
        assert!(wasm_needs_resolver(&fallback, false, true));
        assert!(!wasm_needs_resolver(&fallback, false, false));
        let default = pod(json!({"dnsPolicy": "Default"}));
        assert!(!wasm_needs_resolver(&default, false, true));
    }

    fn cpu(limit: &str, request: &str) -> Resources {
        Resources::of(&json!({"resources": {
            "limits": {"cpu": limit, "memory": "64Mi"}, "requests": {"cpu": request}}}))
    }

    /// Regression (structure issue): the agent parsed quantities in floating point, so `9m`
    /// of CPU was 10 millicores on the node while the scheduler counted 9. The node now
    /// counts every amount from 1m to 100 cores exactly as the scheduler (and Kubernetes).
    #[test]
    fn cpu_is_counted_exactly_as_the_scheduler_counts_it() {
        assert_eq!(
            cpu("9m", "9m"),
            Resources {
                memory_limit: Some(64 << 20),
                cpu_limit_millis: Some(9),
                cpu_shares: Some(9),
            }
        );
        for n in 1..=100_000u64 {
            let r = cpu(&format!("{n}m"), &format!("{}.{:03}", n / 1000, n % 1000));
            assert_eq!(r.cpu_limit_millis, Some(n), "{n}m");
            assert_eq!(
                r.cpu_shares,
                Some((n * 1024 / 1000).max(2)),
                "{}.{:03}",
                n / 1000,
                n % 1000
            );
            assert_eq!(
                r.cpu_limit_millis,
                kedge_core::quantity::parse_cpu_millis(&format!("{n}m")).ok()
            );
        }
    }
}
