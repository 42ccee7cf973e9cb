//! The downward API: what a pod may learn about itself, as environment variables
//! (`fieldRef`, `resourceFieldRef`) and as `downwardAPI` volume files (also a projected
//! volume's source), worded and rounded as kubelet does.

use kedge_core::{meta, quantity};
use serde_json::Value;

use super::objects::VolumeFile;

/// The pod and where it runs.
pub(crate) struct PodInfo<'a> {
    pub pod: &'a Value,
    pub node: &'a str,
    pub host_ip: &'a str,
    /// The pod's own address; the node's when it shares the node's network.
    pub pod_ip: &'a str,
}

/// A label or annotation map as kubelet writes it to a file: `key="value"` lines, sorted.
fn format_map(m: Option<&serde_json::Map<String, Value>>) -> String {
    let mut lines: Vec<String> = m
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            format!("{k}={}", Value::String(v.to_string()))
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// `metadata.labels['key']` → (`labels`, `key`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (map, rest) = path.strip_prefix("metadata.")?.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    Some((map, key))
}

/// The value of a `fieldRef` path; `volume` allows the whole label and annotation maps,
/// which only files may hold.
pub(crate) fn field(info: &PodInfo, path: &str, volume: bool) -> Result<String, String> {
    let pod = info.pod;
    Ok(match path {
        "metadata.name" => meta::name(pod).to_string(),
        "metadata.namespace" => meta::namespace(pod).to_string(),
        "metadata.uid" => meta::uid(pod).to_string(),
        "metadata.labels" | "metadata.annotations" if volume => {
            let key = &path["metadata.".len()..];
            format_map(
                pod.pointer(&format!("/metadata/{key}"))
                    .and_then(Value::as_object),
            )
        }
        "spec.nodeName" => info.node.to_string(),
        "spec.serviceAccountName" => pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string(),
        "status.hostIP" | "status.hostIPs" => info.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => info.pod_ip.to_string(),
        other => match subscript(other) {
            Some((map @ ("labels" | "annotations"), key)) => pod
                .pointer(&format!("/metadata/{map}"))
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => return Err(format!("fieldRef {other:?} is not supported")),
        },
    })
}

/// The value of a `resourceFieldRef` of container `container` (by name): its limit or
/// request divided by `divisor` and rounded up; an unset limit is the node's allocatable
/// amount, as in Kubernetes.
pub(crate) fn resource(
    info: &PodInfo,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let c = ["containers", "initContainers"]
        .iter()
        .filter_map(|l| {
            info.pod
                .pointer(&format!("/spec/{l}"))
                .and_then(Value::as_array)
        })
        .flatten()
        .find(|c| c["name"].as_str() == Some(container))
        .ok_or_else(|| format!("resourceFieldRef: no container named {container:?}"))?;
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef: unsupported resource {resource:?}"))?;
    if !matches!(kind, "limits" | "requests") || !matches!(name, "cpu" | "memory") {
        return Err(format!(
            "resourceFieldRef: unsupported resource {resource:?} (limits.cpu, limits.memory, \
             requests.cpu, requests.memory are)"
        ));
    }
    let set = c
        .pointer(&format!("/resources/{kind}/{name}"))
        .and_then(Value::as_str);
    // A limit not set is the node's allocatable amount; a request not set is 0.
    let bad = |e: quantity::QuantityError| format!("resourceFieldRef: {e}");
    if name == "cpu" {
        let millis = match set {
            Some(q) => quantity::parse_cpu_millis(q).map_err(bad)?,
            None if kind == "limits" => node_cpu_millis(),
            None => 0,
        };
        let per = quantity::parse_cpu_millis(divisor.unwrap_or("1")).map_err(bad)?;
        if per == 0 {
            return Err("resourceFieldRef: divisor must be greater than 0".into());
        }
        Ok(millis.div_ceil(per).to_string())
    } else {
        let bytes = match set {
            Some(q) => quantity::parse_bytes(q).map_err(bad)?,
            None if kind == "limits" => super::node::mem_total_bytes(),
            None => 0,
        };
        let per = quantity::parse_bytes(divisor.unwrap_or("1")).map_err(bad)?;
        if per == 0 {
            return Err("resourceFieldRef: divisor must be greater than 0".into());
        }
        Ok(bytes.div_ceil(per).to_string())
    }
}

fn node_cpu_millis() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000
}

/// The files of a `downwardAPI` volume (or projected source): one per item, with the item's
/// mode or `mode`.
pub(crate) fn files(info: &PodInfo, source: &Value, mode: u32) -> Result<Vec<VolumeFile>, String> {
    let mut out = Vec::new();
    for item in source["items"].as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default().to_string();
        let text = if let Some(f) = item.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
            field(info, f, true)?
        } else if let Some(r) = item.get("resourceFieldRef") {
            resource(
                info,
                r["containerName"].as_str().unwrap_or_default(),
                r["resource"].as_str().unwrap_or_default(),
                r["divisor"].as_str(),
            )?
        } else {
            return Err(format!(
                "downwardAPI item {path:?} has no fieldRef or resourceFieldRef"
            ));
        };
        out.push(VolumeFile {
            path,
            bytes: text.into_bytes(),
            mode: item["mode"].as_u64().map_or(mode, |m| m as u32 & 0o777),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u-1",
            "labels": {"zone": "us-est-coast", "cluster": "test-cluster1", "rack": "rack-22"},
            "annotations": {"build": "two", "builder": "john-doe"}},
            "spec": {"containers": [{"name": "client", "resources": {
                "requests": {"cpu": "250m", "memory": "32Mi"},
                "limits": {"cpu": "500m", "memory": "64Mi"}}},
                {"name": "bare"}]}})
    }

    fn info(pod: &Value) -> PodInfo<'_> {
        PodInfo {
            pod,
            node: "n1",
            host_ip: "10.0.0.1",
            pod_ip: "10.0.0.1",
        }
    }

    /// The documentation's downward API volume example: labels and annotations files.
    #[test]
    fn fields_read_as_kubelet_writes_them() {
        let p = pod();
        let i = info(&p);
        assert_eq!(
            field(&i, "metadata.labels", true).unwrap(),
            "cluster=\"test-cluster1\"\nrack=\"rack-22\"\nzone=\"us-est-coast\""
        );
        assert_eq!(
            field(&i, "metadata.annotations", true).unwrap(),
            "build=\"two\"\nbuilder=\"john-doe\""
        );
        assert!(field(&i, "metadata.labels", false).is_err(), "not in env");
        assert_eq!(
            field(&i, "metadata.labels['zone']", false).unwrap(),
            "us-est-coast"
        );
        assert_eq!(
            field(&i, "metadata.annotations['none']", false).unwrap(),
            ""
        );
        assert_eq!(field(&i, "spec.nodeName", false).unwrap(), "n1");
        assert!(field(&i, "spec.something", false).is_err());
    }

    /// Every path the API lets through resolves here.
    #[test]
    fn every_path_the_api_accepts_resolves() {
        let p = pod();
        let i = info(&p);
        for path in kedge_core::pod::FIELD_REF_PATHS {
            assert!(field(&i, path, false).is_ok(), "{path}");
        }
        for path in kedge_core::pod::FILE_FIELD_REF_PATHS {
            assert!(field(&i, path, true).is_ok(), "{path}");
        }
    }

    /// The documentation's resourceFieldRef example: divisors, rounding up, and the node's
    /// allocatable amount for a limit not set.
    #[test]
    fn resources_divide_and_round_up() {
        let p = pod();
        let i = info(&p);
        let r = |c: &str, res: &str, d: Option<&str>| resource(&i, c, res, d).unwrap();
        assert_eq!(r("client", "requests.cpu", Some("1m")), "250");
        assert_eq!(
            r("client", "limits.cpu", None),
            "1",
            "500m rounds up to 1 core"
        );
        assert_eq!(r("client", "requests.memory", Some("1Mi")), "32");
        assert_eq!(r("client", "limits.memory", Some("1Mi")), "64");
        assert_eq!(
            r("client", "limits.memory", None),
            (64u64 << 20).to_string()
        );
        assert_eq!(r("bare", "requests.cpu", None), "0");
        assert_eq!(
            r("bare", "limits.cpu", Some("1m")),
            node_cpu_millis().to_string()
        );
        assert!(resource(&i, "client", "limits.hugepages-2Mi", None).is_err());
        assert!(resource(&i, "nobody", "limits.cpu", None).is_err());
    }

    #[test]
    fn volume_items_become_files() {
        let p = pod();
        let source = json!({"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "cpu_limit", "resourceFieldRef": {"containerName": "client",
                "resource": "limits.cpu", "divisor": "1m"}, "mode": 0o400}]});
        let f = files(&info(&p), &source, 0o644).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].bytes, b"500");
        assert_eq!((f[0].mode, f[1].mode), (0o644, 0o400));
    }
}
