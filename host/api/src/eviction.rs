//! The `pods/eviction` subresource: a pod deletion that respects PodDisruptionBudgets, as
//! kube-apiserver's eviction REST handler does it (what `kubectl drain` calls).
//!
//! - A pod that is already disrupted — terminal (`Succeeded`/`Failed`), `Pending` or being
//!   deleted — is deleted without looking at any budget.
//! - Otherwise the budgets of its namespace whose selector picks it are found (policy/v1: an
//!   empty selector picks every pod, an absent one none). None: the pod is deleted. More than
//!   one: 500, the subresource does not support it.
//! - One budget, pod not Ready: with `unhealthyPodEvictionPolicy: AlwaysAllow`, or when the
//!   budget is met (`currentHealthy >= desiredHealthy > 0`), the pod is deleted without
//!   spending anything, pinned to the resourceVersion it was judged at.
//! - Otherwise one disruption is spent: refused with 429 TooManyRequests while
//!   `disruptionsAllowed` is 0 or the controller has not seen the budget's generation yet;
//!   else `disruptionsAllowed` is decremented and the pod recorded in `disruptedPods` (so the
//!   disruption controller does not count it healthy until it is gone), with the budget's
//!   resourceVersion as precondition — two concurrent evictions cannot spend one disruption
//!   twice — and the pod is deleted with the eviction's `deleteOptions`.
//!
//! The decisions ([`plan`], [`spend`]) are pure; [`evict`] runs them against the API.

use serde_json::{Value, json};

use super::error::{ApiError, Result};
use super::ops::{Api, DeleteOptions, WriteOptions};
use kedge_core::resources::{self, Resource};
use kedge_core::selector::Selector;

/// kube-apiserver's `MaxDisruptedPodSize`: evictions approved but not yet seen by the
/// disruption controller; past it, evictions are refused until the controller catches up.
const MAX_DISRUPTED_PODS: usize = 2000;

/// Attempts at a write that lost a race with another writer (kube-apiserver retries 20 times).
const CONFLICT_ATTEMPTS: usize = 20;

/// The cause type kubectl and clients look for in a refused eviction.
const DISRUPTION_BUDGET_CAUSE: &str = "DisruptionBudget";

const VIOLATES: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

const MULTIPLE: &str = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.";

/// What an eviction does with a pod, given the budgets of its namespace.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Already disrupted (terminal, pending, terminating): delete, no budget consulted;
    /// `pin` holds the delete to the pod's resourceVersion (not for terminal or terminating
    /// pods, which cannot become healthy again).
    Delete { pin: bool },
    /// No budget selects the pod.
    Unguarded,
    /// More than one budget selects the pod: refused.
    Ambiguous,
    /// An unhealthy pod the budget lets go without spending a disruption: delete pinned to
    /// the pod's resourceVersion (it must not have turned Ready meanwhile).
    Unhealthy { budget: String },
    /// Spend one disruption of the budget, then delete.
    Spend { budget: String },
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn int_at(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// Kubernetes' `IsPodReady`: the Ready condition is True.
fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True")
}

/// Whether a policy/v1 budget's selector picks `pod`: an empty selector picks every pod, an
/// absent (or unparsable) one none.
pub(crate) fn selects(pdb: &Value, pod: &Value) -> bool {
    let Some(sel) = pdb.pointer("/spec/selector").filter(|s| s.is_object()) else {
        return false;
    };
    Selector::from_structured(sel)
        .is_ok_and(|s| s.matches(pod.pointer("/metadata/labels").and_then(Value::as_object)))
}

/// The decision for `pod` among the budgets of its namespace.
pub(crate) fn plan(pod: &Value, budgets: &[Value]) -> Plan {
    let phase = str_at(pod, "/status/phase");
    let terminating = pod.pointer("/metadata/deletionTimestamp").is_some();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    if terminal || terminating || phase == "Pending" {
        return Plan::Delete {
            pin: !terminal && !terminating,
        };
    }
    let mut matching = budgets.iter().filter(|b| selects(b, pod));
    let Some(pdb) = matching.next() else {
        return Plan::Unguarded;
    };
    if matching.next().is_some() {
        return Plan::Ambiguous;
    }
    let budget = str_at(pdb, "/metadata/name").to_string();
    if !is_ready(pod) {
        let always = str_at(pdb, "/spec/unhealthyPodEvictionPolicy") == "AlwaysAllow";
        let desired = int_at(pdb, "/status/desiredHealthy");
        let met = int_at(pdb, "/status/currentHealthy") >= desired && desired > 0;
        if always || met {
            return Plan::Unhealthy { budget };
        }
    }
    Plan::Spend { budget }
}

/// 429 while the controller has not processed the budget (or the pod changed under us).
fn still_processing(budget: &str) -> ApiError {
    too_many_requests(
        format!("The disruption budget {budget} is still being processed by the server."),
        10,
    )
}

fn too_many_requests(cause: String, retry_after: u32) -> ApiError {
    let mut details = json!({"causes": [{"reason": DISRUPTION_BUDGET_CAUSE, "message": cause}]});
    if retry_after > 0 {
        details["retryAfterSeconds"] = json!(retry_after);
    }
    ApiError {
        details: Some(details),
        ..ApiError::new(429, "TooManyRequests", VIOLATES)
    }
}

fn budget_forbidden(budget: &str, why: &str) -> ApiError {
    ApiError::forbidden(format!(
        "poddisruptionbudget.policy \"{budget}\" is forbidden: {why}"
    ))
}

/// Sets the `DisruptionAllowed` condition (a metav1.Condition) from `disruptionsAllowed`, as
/// Kubernetes' `UpdateDisruptionAllowedCondition` does; `lastTransitionTime` moves only with
/// the status.
pub(crate) fn set_disruption_allowed(status: &mut Value, now: &str) {
    let allowed = int_at(status, "/disruptionsAllowed") > 0;
    let (state, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let observed = int_at(status, "/observedGeneration");
    if !status.get("conditions").is_some_and(Value::is_array) {
        status["conditions"] = json!([]);
    }
    let conds = status["conditions"].as_array_mut().expect("just made");
    let mut c = json!({"type": "DisruptionAllowed", "status": state, "reason": reason,
        "message": "", "observedGeneration": observed, "lastTransitionTime": now});
    match conds
        .iter_mut()
        .find(|c| str_at(c, "/type") == "DisruptionAllowed")
    {
        Some(old) => {
            if str_at(old, "/status") == state
                && let Some(t) = old.get("lastTransitionTime").filter(|t| t.is_string())
            {
                c["lastTransitionTime"] = t.clone();
            }
            *old = c;
        }
        None => conds.push(c),
    }
}

/// kube-apiserver's `checkAndDecrement`: the budget after spending one disruption on `pod`
/// at `now`, or why it cannot be spent. The dry-run form records nothing in `disruptedPods`.
pub(crate) fn spend(pdb: &Value, pod: &str, now: &str, dry_run: bool) -> Result<Value> {
    let name = str_at(pdb, "/metadata/name");
    if int_at(pdb, "/status/observedGeneration") < int_at(pdb, "/metadata/generation") {
        return Err(still_processing(name));
    }
    let allowed = int_at(pdb, "/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(budget_forbidden(
            name,
            "pdb disruptions allowed is negative",
        ));
    }
    let disrupted = pdb
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(budget_forbidden(
            name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(too_many_requests(
            format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                int_at(pdb, "/status/desiredHealthy"),
                int_at(pdb, "/status/currentHealthy")
            ),
            0,
        ));
    }
    let mut next = pdb.clone();
    let status = &mut next["status"];
    status["disruptionsAllowed"] = json!(allowed - 1);
    if allowed - 1 == 0 {
        set_disruption_allowed(status, now);
    }
    if !dry_run {
        if !status.get("disruptedPods").is_some_and(Value::is_object) {
            status["disruptedPods"] = json!({});
        }
        status["disruptedPods"][pod] = json!(now);
    }
    Ok(next)
}

fn pods() -> &'static Resource {
    resources::by_kind("v1", "Pod").expect("pods are served")
}

fn budgets() -> &'static Resource {
    resources::by_kind("policy/v1", "PodDisruptionBudget").expect("budgets are served")
}

/// The eviction's delete options, checked against the URL as kube-apiserver checks them.
fn delete_options(ns: &str, name: &str, eviction: &Value, dry_run: bool) -> Result<DeleteOptions> {
    let api_version = str_at(eviction, "/apiVersion");
    if !api_version.is_empty() && !matches!(api_version, "policy/v1" | "policy/v1beta1") {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version (policy/v1)"
        )));
    }
    let kind = str_at(eviction, "/kind");
    if !kind.is_empty() && kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "not a Eviction object: {kind}"
        )));
    }
    if str_at(eviction, "/metadata/name") != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let body_ns = str_at(eviction, "/metadata/namespace");
    if !body_ns.is_empty() && body_ns != ns {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut opts = match eviction.get("deleteOptions").filter(|o| o.is_object()) {
        Some(o) => DeleteOptions::from_body(o)?,
        None => DeleteOptions::default(),
    };
    opts.dry_run |= dry_run;
    Ok(opts)
}

/// POST `pods/NAME/eviction` with a policy/v1 (or v1beta1) Eviction body; `dry_run` is the
/// request's `dryRun=All`. Returns the Success Status kube-apiserver answers with 201.
pub(crate) fn evict(
    api: &Api,
    ns: &str,
    name: &str,
    eviction: &Value,
    dry_run: bool,
) -> Result<Value> {
    let mut opts = delete_options(ns, name, eviction, dry_run)?;
    let user_pinned = opts.precondition_rv.is_some();
    let mut attempts = 0;
    let (pod, plan) = loop {
        let pod = api.get(pods(), ns, name)?;
        let list = api.list(budgets(), ns, &Default::default())?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let plan = plan(&pod, &items);
        let Plan::Delete { pin } = plan else {
            break (pod, plan);
        };
        let mut o = opts.clone();
        if pin && !user_pinned {
            o.precondition_rv = Some(str_at(&pod, "/metadata/resourceVersion").to_string());
        }
        match api.delete(pods(), ns, name, &o) {
            Err(e) if e.reason == "Conflict" && !user_pinned && attempts < CONFLICT_ATTEMPTS => {
                attempts += 1;
            }
            Err(e) => return Err(e),
            Ok(_) => return Ok(success()),
        }
    };
    let budget = match &plan {
        Plan::Ambiguous => {
            return Err(ApiError::new(500, "", MULTIPLE));
        }
        Plan::Unguarded => None,
        Plan::Unhealthy { budget } => {
            if !user_pinned {
                opts.precondition_rv = Some(str_at(&pod, "/metadata/resourceVersion").to_string());
            }
            Some(budget.clone())
        }
        Plan::Spend { budget } => {
            spend_with_retries(api, ns, budget, name, opts.dry_run)?;
            None
        }
        Plan::Delete { .. } => unreachable!("handled in the loop"),
    };
    match api.delete(pods(), ns, name, &opts) {
        Ok(_) => Ok(success()),
        // The unhealthy pod changed (perhaps turned Ready) since it was judged: ask the
        // client to try again rather than delete a pod the budget may now guard.
        Err(e) if e.reason == "Conflict" && !user_pinned && budget.is_some() => {
            Err(still_processing(budget.as_deref().unwrap_or_default()))
        }
        Err(e) => Err(e),
    }
}

/// Spends one disruption of the budget `name`, re-reading it after a lost race.
fn spend_with_retries(api: &Api, ns: &str, budget: &str, pod: &str, dry_run: bool) -> Result<()> {
    let res = budgets();
    for _ in 0..CONFLICT_ATTEMPTS {
        let pdb = api.get(res, ns, budget)?;
        let next = spend(&pdb, pod, &api.now(), dry_run)?;
        if dry_run {
            return Ok(());
        }
        // Pinned to the budget as read: a concurrent eviction makes this a conflict.
        match api.update(
            res,
            ns,
            budget,
            next,
            Some("status"),
            &WriteOptions::default(),
        ) {
            Ok(_) => return Ok(()),
            Err(e) if e.reason == "Conflict" => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError {
        details: Some(json!({"retryAfterSeconds": 10})),
        ..ApiError::new(
            504,
            "Timeout",
            format!("couldn't update PodDisruptionBudget \"{budget}\" due to conflicts"),
        )
    })
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ready: bool, terminating: bool) -> Value {
        let mut p = json!({"metadata": {"name": "web-1", "namespace": "default",
            "labels": {"app": "web"}, "resourceVersion": "7"},
            "status": {"phase": phase, "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        p
    }

    fn pdb(name: &str, selector: Value, status: Value) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "generation": 1},
            "spec": {"minAvailable": 1, "selector": selector}, "status": status})
    }

    fn web(status: Value) -> Value {
        pdb("web", json!({"matchLabels": {"app": "web"}}), status)
    }

    fn always_allow(mut b: Value) -> Value {
        b["spec"]["unhealthyPodEvictionPolicy"] = json!("AlwaysAllow");
        b
    }

    /// The decision table of kube-apiserver's eviction handler.
    #[test]
    fn eviction_decisions() {
        let healthy = json!({"currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1,
            "expectedPods": 2, "observedGeneration": 1});
        let degraded = json!({"currentHealthy": 1, "desiredHealthy": 2, "disruptionsAllowed": 0,
            "expectedPods": 2, "observedGeneration": 1});
        let spend = || Plan::Spend {
            budget: "web".into(),
        };
        let unhealthy = || Plan::Unhealthy {
            budget: "web".into(),
        };
        let other = pdb("db", json!({"matchLabels": {"app": "db"}}), healthy.clone());
        let cases: Vec<(&str, Value, Vec<Value>, Plan)> = vec![
            (
                "no budget",
                pod("Running", true, false),
                vec![],
                Plan::Unguarded,
            ),
            (
                "a budget of other pods",
                pod("Running", true, false),
                vec![other.clone()],
                Plan::Unguarded,
            ),
            (
                "healthy pod under a budget",
                pod("Running", true, false),
                vec![web(healthy.clone()), other],
                spend(),
            ),
            // Spending is where a budget at zero is refused (see `spend`).
            (
                "healthy pod, budget exhausted",
                pod("Running", true, false),
                vec![web(degraded.clone())],
                spend(),
            ),
            (
                "two budgets",
                pod("Running", true, false),
                vec![web(healthy.clone()), pdb("all", json!({}), healthy.clone())],
                Plan::Ambiguous,
            ),
            (
                "an empty selector selects every pod",
                pod("Running", true, false),
                vec![pdb("all", json!({}), healthy.clone())],
                Plan::Spend {
                    budget: "all".into(),
                },
            ),
            (
                "an absent selector selects none",
                pod("Running", true, false),
                vec![pdb("none", Value::Null, healthy.clone())],
                Plan::Unguarded,
            ),
            (
                "unhealthy pod, budget met (IfHealthyBudget)",
                pod("Running", false, false),
                vec![web(healthy.clone())],
                unhealthy(),
            ),
            (
                "unhealthy pod, budget not met (IfHealthyBudget)",
                pod("Running", false, false),
                vec![web(degraded.clone())],
                spend(),
            ),
            (
                "unhealthy pod, budget not met (AlwaysAllow)",
                pod("Running", false, false),
                vec![always_allow(web(degraded.clone()))],
                unhealthy(),
            ),
            (
                "unhealthy pod, nothing desired yet",
                pod("Running", false, false),
                vec![web(json!({"currentHealthy": 0, "desiredHealthy": 0}))],
                spend(),
            ),
            (
                "succeeded pod",
                pod("Succeeded", false, false),
                vec![web(degraded.clone())],
                Plan::Delete { pin: false },
            ),
            (
                "failed pod",
                pod("Failed", false, false),
                vec![web(degraded.clone()), web(degraded.clone())],
                Plan::Delete { pin: false },
            ),
            (
                "pending pod",
                pod("Pending", false, false),
                vec![web(degraded.clone())],
                Plan::Delete { pin: true },
            ),
            (
                "terminating pod",
                pod("Running", true, true),
                vec![web(degraded)],
                Plan::Delete { pin: false },
            ),
        ];
        for (what, pod, budgets, want) in cases {
            assert_eq!(plan(&pod, &budgets), want, "{what}");
        }
    }

    /// Spending: kube-apiserver's `checkAndDecrement`, refusals worded as it words them.
    #[test]
    fn spending_a_disruption() {
        let now = "2025-01-01T00:00:00Z";
        let b = web(
            json!({"currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1,
            "expectedPods": 2, "observedGeneration": 1,
            "conditions": [{"type": "DisruptionAllowed", "status": "True", "reason": "SufficientPods",
                "message": "", "observedGeneration": 1, "lastTransitionTime": "2024-01-01T00:00:00Z"}]}),
        );
        let next = spend(&b, "web-1", now, false).unwrap();
        assert_eq!(next["status"]["disruptionsAllowed"], 0);
        assert_eq!(next["status"]["disruptedPods"]["web-1"], now);
        let cond = &next["status"]["conditions"][0];
        assert_eq!(
            (
                &cond["status"],
                &cond["reason"],
                &cond["lastTransitionTime"]
            ),
            (&json!("False"), &json!("InsufficientPods"), &json!(now))
        );
        // A dry run decrements but records nothing.
        let dry = spend(&b, "web-1", now, true).unwrap();
        assert!(dry["status"]["disruptedPods"].is_null());

        // Exhausted: 429 with the DisruptionBudget cause and no Retry-After.
        let e = spend(&next, "web-2", now, false).unwrap_err();
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        assert_eq!(e.message, VIOLATES);
        let details = e.details.unwrap();
        assert_eq!(
            details["causes"][0],
            json!({"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 1 healthy pods and has 2 currently"})
        );
        assert!(details["retryAfterSeconds"].is_null());

        // A spec change the controller has not seen yet.
        let mut stale = b.clone();
        stale["metadata"]["generation"] = json!(2);
        let e = spend(&stale, "web-1", now, false).unwrap_err();
        assert_eq!(e.code, 429);
        assert_eq!(e.details.unwrap()["retryAfterSeconds"], 10);

        let mut negative = b;
        negative["status"]["disruptionsAllowed"] = json!(-1);
        let e = spend(&negative, "web-1", now, false).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(e.message.contains("pdb disruptions allowed is negative"));
    }

    #[test]
    fn eviction_bodies_are_checked_against_the_url() {
        let ok = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "web-1", "namespace": "default"},
            "deleteOptions": {"gracePeriodSeconds": 5, "preconditions": {"uid": "u"}}});
        let o = delete_options("default", "web-1", &ok, false).unwrap();
        assert_eq!(o.grace_period_seconds, Some(5));
        assert_eq!(o.precondition_uid.as_deref(), Some("u"));
        assert!(!o.dry_run);
        let mut beta = ok.clone();
        beta["apiVersion"] = json!("policy/v1beta1");
        assert!(
            delete_options("default", "web-1", &beta, true)
                .unwrap()
                .dry_run
        );
        let e = delete_options("default", "web-2", &ok, false).unwrap_err();
        assert_eq!(
            e.message,
            "name in URL does not match name in Eviction object"
        );
        assert_eq!(
            delete_options("other", "web-1", &ok, false)
                .unwrap_err()
                .code,
            400
        );
        let mut wrong = ok;
        wrong["apiVersion"] = json!("v1");
        assert_eq!(
            delete_options("default", "web-1", &wrong, false)
                .unwrap_err()
                .code,
            400
        );
    }
}
