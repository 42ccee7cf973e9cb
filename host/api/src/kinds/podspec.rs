//! Pod specs, wherever they appear (a Pod, a workload's template, a CronJob's job template):
//! their defaults, their checks, the shared checks of the apps workloads' selector and
//! template, and the QoS class.

use serde_json::{Value, json};

use super::common::{go_map, invalid_raw};
use crate::error::Cause;
use kedge_core::meta;
use kedge_core::resources::Resource;
use kedge_core::selector;

pub(super) fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    s.entry("restartPolicy").or_insert(json!("Always"));
    s.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    s.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    s.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    s.entry("securityContext").or_insert(json!({}));
    s.entry("enableServiceLinks").or_insert(json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = s.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                let policy = default_pull_policy(image);
                c.entry("imagePullPolicy").or_insert(json!(policy));
                c.entry("terminationMessagePath")
                    .or_insert(json!("/dev/termination-log"));
                c.entry("terminationMessagePolicy").or_insert(json!("File"));
                c.entry("resources").or_insert(json!({}));
                super::probes::default_probes(c);
            }
        }
    }
}

/// SetDefaults_Pod: a container with a limit and no request for a resource requests its
/// limit, so the scheduler counts what the container may use. Pods only, not templates (as in
/// Kubernetes, where a template's pods are defaulted when created).
pub(super) fn requests_from_limits(spec: &mut Value) {
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(cs)) = spec.get_mut(list) else {
            continue;
        };
        for c in cs {
            let Some(limits) = c
                .pointer("/resources/limits")
                .and_then(Value::as_object)
                .filter(|l| !l.is_empty())
                .cloned()
            else {
                continue;
            };
            let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) else {
                continue;
            };
            let requests = resources.entry("requests").or_insert_with(|| json!({}));
            if requests.is_null() {
                *requests = json!({});
            }
            if let Some(requests) = requests.as_object_mut() {
                for (k, v) in limits {
                    requests.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// `:latest` or no tag → Always, else IfNotPresent (Kubernetes' rule). A malformed
/// reference is left for the agent to report as a pull error on the container.
fn default_pull_policy(image: &str) -> &'static str {
    use kedge_registry::PullPolicy;
    match kedge_registry::Reference::parse(image) {
        Ok(r) => match kedge_registry::default_pull_policy(&r) {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        },
        Err(_) => "IfNotPresent",
    }
}

/// The apps workloads' (Deployment, ReplicaSet, DaemonSet, StatefulSet) shared checks: replicas,
/// a non-empty selector the template's labels match, and a pod template that always restarts.
pub(super) fn validate_workload(res: &Resource, obj: &Value, causes: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        causes.push(Cause::required("spec"));
        return;
    };
    if let Some(r) = spec.get("replicas")
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(invalid_raw(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let sel = match spec.get("selector") {
        None => {
            causes.push(Cause::required("spec.selector"));
            None
        }
        Some(s) => match selector::Selector::from_structured(s) {
            Ok(sel) if sel.is_empty() => {
                causes.push(Cause::invalid(
                    "spec.selector",
                    "{}",
                    format!("empty selector is invalid for {}", res.singular),
                ));
                None
            }
            Ok(sel) => Some(sel),
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", "", e));
                None
            }
        },
    };
    let Some(template) = spec.get("template") else {
        causes.push(Cause::required("spec.template"));
        return;
    };
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if let Some(sel) = sel
        && !sel.matches(labels)
    {
        causes.push(invalid_raw(
            "spec.template.metadata.labels",
            &go_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    match template.get("spec") {
        Some(pod) => {
            validate_pod_spec(pod, "spec.template.spec", causes);
            let policy = pod.get("restartPolicy").and_then(Value::as_str);
            if policy.is_some_and(|p| p != "Always") {
                causes.push(Cause::unsupported(
                    "spec.template.spec.restartPolicy",
                    policy.unwrap_or_default(),
                    &["Always"],
                ));
            }
        }
        None => causes.push(Cause::required("spec.template.spec")),
    }
}

/// The most containers (init, regular and ephemeral together) a pod may have. Kubernetes sets
/// none, but every container is a process, a log and a status entry on a small node, and a
/// pod of a thousand containers (~800 KB) made every status write of it cost a megabyte.
pub(crate) const MAX_CONTAINERS: usize = 100;

pub(super) fn validate_pod_spec(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let count = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .map(Vec::len)
        .sum::<usize>();
    if count > MAX_CONTAINERS {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            field: format!("{at}.containers"),
            message: format!("Too many: {count}: must have at most {MAX_CONTAINERS} items"),
        });
    }
    let mut seen = Vec::new();
    if let Some(init) = spec.get("initContainers").and_then(Value::as_array) {
        for (i, c) in init.iter().enumerate() {
            let path = format!("{at}.initContainers[{i}]");
            validate_container(c, &path, &mut seen, causes);
            let sidecar = match c.get("restartPolicy").filter(|p| !p.is_null()) {
                None => false,
                Some(p) if p == "Always" => true,
                Some(p) => {
                    causes.push(Cause::unsupported(
                        format!("{path}.restartPolicy"),
                        p.as_str().unwrap_or_default(),
                        &["Always"],
                    ));
                    false
                }
            };
            super::probes::validate_probes(c, &path, !sidecar, causes);
            if !sidecar && c.get("lifecycle").is_some_and(|l| !l.is_null()) {
                causes.push(Cause::forbidden(
                    format!("{path}.lifecycle"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
    match spec.get("containers").and_then(Value::as_array) {
        None => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) if cs.is_empty() => causes.push(Cause::required(format!("{at}.containers"))),
        Some(cs) => {
            for (i, c) in cs.iter().enumerate() {
                let path = format!("{at}.containers[{i}]");
                validate_container(c, &path, &mut seen, causes);
                super::probes::validate_probes(c, &path, false, causes);
                if let Some(p) = c.get("restartPolicy").filter(|p| !p.is_null()) {
                    causes.push(Cause::forbidden(
                        format!("{path}.restartPolicy"),
                        format!(
                            "may not be set for non-init containers (it is {p}): the pod's \
                             restartPolicy applies to them"
                        ),
                    ));
                }
            }
        }
    }
    validate_dns(spec, at, causes);
    if let Some(p) = spec.get("restartPolicy").and_then(Value::as_str) {
        let allowed = ["Always", "OnFailure", "Never"];
        if !allowed.contains(&p) {
            causes.push(Cause::unsupported(
                format!("{at}.restartPolicy"),
                p,
                &allowed,
            ));
        }
    }
}

/// `dnsConfig` and `dnsPolicy: None` as kube-apiserver checks them (what the agent writes
/// into the pod's resolv.conf must be valid): at most 3 nameservers, each an IP address, at
/// most 32 search domains of 2048 characters in all, options with names; `None` needs at
/// least one nameserver.
fn validate_dns(spec: &Value, at: &str, causes: &mut Vec<Cause>) {
    let cfg = spec.get("dnsConfig").filter(|c| !c.is_null());
    let list = |k: &str| -> Vec<&str> {
        cfg.and_then(|c| c.get(k))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    let nameservers = list("nameservers");
    if spec.get("dnsPolicy").and_then(Value::as_str) == Some("None") {
        if cfg.is_none() {
            causes.push(Cause::required_with(
                format!("{at}.dnsConfig"),
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        } else if nameservers.is_empty() {
            causes.push(Cause::required_with(
                format!("{at}.dnsConfig.nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            ));
        }
    }
    if nameservers.len() > 3 {
        causes.push(Cause::invalid(
            format!("{at}.dnsConfig.nameservers"),
            &nameservers.join(","),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            causes.push(Cause::invalid(
                format!("{at}.dnsConfig.nameservers[{i}]"),
                ns,
                "must be a valid IP address",
            ));
        }
    }
    let searches = list("searches");
    if searches.len() > 32 {
        causes.push(Cause::invalid(
            format!("{at}.dnsConfig.searches"),
            &searches.join(" "),
            "must not have more than 32 search paths",
        ));
    }
    if searches.iter().map(|s| s.len() + 1).sum::<usize>() > 2048 {
        causes.push(Cause::invalid(
            format!("{at}.dnsConfig.searches"),
            &searches.join(" "),
            "must not have more than 2048 characters (including spaces) in the search list",
        ));
    }
    for (i, o) in cfg
        .and_then(|c| c.get("options"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if o.get("name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("{at}.dnsConfig.options[{i}].name")));
        }
    }
}

/// One container's name (unique among all of the pod's containers, `seen`), image and pull
/// policy.
fn validate_container<'a>(
    c: &'a Value,
    path: &str,
    seen: &mut Vec<&'a str>,
    causes: &mut Vec<Cause>,
) {
    match c.get("name").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required(format!("{path}.name"))),
        Some(n) => {
            if let Err(why) = meta::validate_label(n) {
                causes.push(Cause::invalid(format!("{path}.name"), n, why));
            }
            if seen.contains(&n) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{path}.name"),
                    message: format!("Duplicate value: {n:?}"),
                });
            }
            seen.push(n);
        }
    }
    match c.get("image").and_then(Value::as_str) {
        None | Some("") => causes.push(Cause::required(format!("{path}.image"))),
        Some(img) if img.trim() != img => causes.push(Cause::invalid(
            format!("{path}.image"),
            img,
            "must not have leading or trailing whitespace",
        )),
        Some(_) => {}
    }
    if let Some(p) = c.get("imagePullPolicy").and_then(Value::as_str) {
        let allowed = ["Always", "IfNotPresent", "Never"];
        if !allowed.contains(&p) {
            causes.push(Cause::unsupported(
                format!("{path}.imagePullPolicy"),
                p,
                &allowed,
            ));
        }
    }
}

/// The pod's QoS class, as the API reports it in status.
pub(crate) fn qos_class(spec: &Value) -> &'static str {
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::test_support::*;

    #[test]
    fn pods_have_a_container_count_limit() {
        let pod = by_kind("v1", "Pod").unwrap();
        let containers = |n: usize| {
            (0..n)
                .map(|i| json!({"name": format!("c{i}"), "image": "busybox"}))
                .collect::<Vec<_>>()
        };
        let p =
            json!({"metadata": {"name": "p"}, "spec": {"containers": containers(MAX_CONTAINERS)}});
        assert!(validate(pod, &p).is_empty());
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": containers(1000)}});
        let causes = validate(pod, &p);
        assert_eq!(
            field_reasons(&causes),
            [("spec.containers", "FieldValueTooMany")]
        );
        assert_eq!(
            causes[0].message,
            "Too many: 1000: must have at most 100 items"
        );
    }

    /// What the agent writes into a pod's resolv.conf is checked first, as kube-apiserver
    /// checks it.
    #[test]
    fn dns_config_is_validated() {
        let pod = by_kind("v1", "Pod").unwrap();
        let with = |extra: Value| {
            let mut p = json!({"metadata": {"name": "p"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
            for (k, v) in extra.as_object().unwrap() {
                p["spec"][k] = v.clone();
            }
            field_reasons(&validate(pod, &p))
                .into_iter()
                .map(|(f, r)| (f.to_string(), r.to_string()))
                .collect::<Vec<_>>()
        };
        let pair = |f: &str, r: &str| vec![(f.to_string(), r.to_string())];
        assert_eq!(
            with(json!({"dnsPolicy": "None"})),
            pair("spec.dnsConfig", "FieldValueRequired")
        );
        assert_eq!(
            with(json!({"dnsPolicy": "None", "dnsConfig": {"searches": ["a"]}})),
            pair("spec.dnsConfig.nameservers", "FieldValueRequired")
        );
        assert!(
            with(
                json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"],
            "options": [{"name": "ndots", "value": "2"}]}})
            )
            .is_empty()
        );
        assert_eq!(
            with(json!({"dnsConfig": {"nameservers": ["a", "1.1.1.1", "1.0.0.1", "8.8.8.8"]}})),
            vec![
                (
                    "spec.dnsConfig.nameservers".to_string(),
                    "FieldValueInvalid".to_string()
                ),
                (
                    "spec.dnsConfig.nameservers[0]".to_string(),
                    "FieldValueInvalid".to_string()
                ),
            ]
        );
        assert_eq!(
            with(json!({"dnsConfig": {"options": [{"value": "x"}]}})),
            pair("spec.dnsConfig.options[0].name", "FieldValueRequired")
        );
    }

    /// Regression (hardening issue, finding 5): a pod with limits and no requests requests
    /// its limits (it was scheduled as if it asked for nothing).
    #[test]
    fn pod_requests_default_to_limits() {
        let pod = by_kind("v1", "Pod").unwrap();
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"limits": {"memory": "1Ti", "cpu": "2"}}},
            {"name": "b", "image": "i", "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1Mi"}}},
            {"name": "c", "image": "i"},
        ], "initContainers": [{"name": "i", "image": "i", "resources": {"limits": {"cpu": "1"}}}]}});
        default(pod, &mut p);
        let cs = &p["spec"]["containers"];
        assert_eq!(
            cs[0]["resources"]["requests"],
            json!({"memory": "1Ti", "cpu": "2"})
        );
        assert_eq!(cs[1]["resources"]["requests"], json!({"memory": "1Mi"}));
        assert_eq!(cs[2]["resources"], json!({}));
        assert_eq!(
            p["spec"]["initContainers"][0]["resources"]["requests"],
            json!({"cpu": "1"})
        );
        // Templates are left alone (their pods are defaulted when created).
        let dep = by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "i", "resources": {"limits": {"memory": "1Gi"}}}]}}}});
        default(dep, &mut d);
        assert!(
            d.pointer("/spec/template/spec/containers/0/resources/requests")
                .is_none()
        );
    }

    #[test]
    fn pod_without_image_is_invalid() {
        let res = by_kind("v1", "Pod").unwrap();
        let pod = json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "c"}]}});
        let causes = validate(res, &pod);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.containers[0].image");
        assert_eq!(causes[0].message, "Required value");
    }

    #[test]
    fn qos() {
        assert_eq!(qos_class(&json!({"containers": [{}]})), "BestEffort");
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }
}
