//! Keeps the node's copies of Secrets and ConfigMaps fresh and rewrites the volumes of
//! running pods from them.

use std::time::Duration;

use kedge_core::meta;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::pods::pod_dirs;
use super::{Ctx, Shared, objects, pod_cache, spec};

/// How often, by default, the node's copies of Secrets and ConfigMaps are refreshed from the
/// API and the `configMap`, `secret` and `projected` volumes of running pods rewritten from
/// them: a minute, as kubelet's sync period (`kedge agent --object-refresh-seconds`).
pub const OBJECT_REFRESH: Duration = Duration::from_secs(60);

pub(crate) async fn object_refresh_loop(ctx: Ctx, period: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if ctx.client.is_connected() {
            objects::refresh(&ctx.client, &ctx.objects).await;
            refresh_volumes(&ctx).await;
        }
    }
}

/// Rewrites the `configMap`, `secret` and `projected` volumes of the pods this node runs from
/// the node's fresh copies, as kubelet's sync does: containers see the new files (the volume's
/// `..data` link swapped at once, see [`objects::write_volume`]) without a restart. As in
/// Kubernetes:
/// - a file mounted by `subPath` is not updated (it is bound to the file of its time);
/// - a volume whose object is gone keeps its last files unless the source is `optional`, in
///   which case its files go (kubelet writes an optional missing object as empty);
/// - a volume no container has written yet is left to the container's start.
///
/// Each write also removes what interrupted writes left, and old timestamped directories no
/// container's `subPath` is bound into any more ([`objects::Volumes`]).
pub(crate) async fn refresh_volumes(ctx: &Shared) {
    for pod in pod_cache::peek(&ctx.data_dir) {
        let pod_obj = &pod;
        let dirs = pod_dirs(ctx, &pod);
        let (ns, pod_name, uid) = (meta::namespace(&pod), meta::name(&pod), meta::uid(&pod));
        for v in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(dir) = spec::projected_dir(&dirs, v).filter(|d| objects::volume_written(d))
            else {
                continue;
            };
            let volume = v["name"].as_str().unwrap_or_default();
            let pod = format!("{ns}/{pod_name}");
            let refs = objects::volume_refs(ns, v);
            let files = objects::resolve(&ctx.client, &ctx.objects, refs, objects::Source::Copies)
                .await
                .and_then(|o| {
                    let info = crate::downward::PodInfo {
                        pod: pod_obj,
                        node: &ctx.node,
                        host_ip: &ctx.host_ip,
                        pod_ip: &ctx
                            .net()
                            .pod(meta::uid(pod_obj))
                            .map(|n| n.ip.to_string())
                            .unwrap_or_else(|| ctx.host_ip.clone()),
                    };
                    objects::volume_files(&o, &info, v)
                });
            let files = match files {
                Ok(Some(files)) => files,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(pod, volume, error = %e, "volume not refreshed: it keeps its files");
                    continue;
                }
            };
            let written = ctx
                .volumes
                .with_pod(uid, (ctx.clock)(), move |w| {
                    w.write(&dir, &files, false).map_err(|e| e.to_string())
                })
                .await
                .and_then(|r| r);
            match written {
                Ok(true) => tracing::info!(pod, volume, "volume updated"),
                Ok(false) => {}
                Err(e) => tracing::debug!(pod, volume, error = %e, "updating a volume failed"),
            }
        }
    }
    // An object first asked for above was kept: if its pod went meanwhile, so does the copy.
    ctx.objects.prune(|| pod_cache::peek(&ctx.data_dir));
}
