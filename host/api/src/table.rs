//! Server-side printing: `meta.k8s.io/v1` Tables with the columns kubectl users know. Each
//! kind's columns and cells are its [`kinds::KindRules`]; the cell formatting they share is in
//! [`kinds::table_fmt`].

use serde_json::{Value, json};

use crate::kinds;
use kedge_core::resources::Resource;

pub(crate) use kinds::table_fmt::map_selector_string;

/// A Table of `items`; `list_meta` is the list's metadata (resourceVersion, continue).
pub fn table(
    res: &Resource,
    items: &[Value],
    list_meta: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let rules = kinds::rules(res);
    let defs: Vec<Value> = rules
        .columns()
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": if c.name == "Name" { "name" } else { "" },
                "description": "", "priority": c.priority})
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            json!({
                "cells": rules.cells(o, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kedge_core::resources::RESOURCES;

    fn row(kind: &str, o: &Value) -> Vec<Value> {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let res = RESOURCES.iter().find(|r| r.kind == kind).unwrap();
        let rules = kinds::rules(res);
        let c = rules.cells(o, now);
        assert_eq!(
            c.len(),
            rules.columns().len(),
            "{kind}: one cell per column"
        );
        c
    }

    #[test]
    fn service_columns() {
        let t = "2025-01-01T00:00:00Z";
        let svc = json!({"metadata": {"name": "web", "creationTimestamp": t},
            "spec": {"type": "NodePort", "clusterIP": "10.43.1.2", "selector": {"b": "2", "a": "1"},
                "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}});
        assert_eq!(
            row("Service", &svc),
            vec![
                json!("web"),
                json!("NodePort"),
                json!("10.43.1.2"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP"),
                json!("10m"),
                json!("a=1,b=2")
            ]
        );
        let lb = json!({"spec": {"type": "LoadBalancer", "clusterIP": "None"}});
        let r = row("Service", &lb);
        assert_eq!(
            (&r[2], &r[3], &r[4]),
            (&json!("None"), &json!("<pending>"), &json!("<none>"))
        );
    }

    #[test]
    fn endpoints_column() {
        let ep = json!({"subsets": [{"addresses": [{"ip": "1.1.1.1"}, {"ip": "2.2.2.2"}],
            "ports": [{"port": 80}, {"port": 81}]}]});
        assert_eq!(
            row("Endpoints", &ep)[1],
            "1.1.1.1:80,2.2.2.2:80,1.1.1.1:81 + 1 more..."
        );
        assert_eq!(row("Endpoints", &json!({}))[1], "<none>");
    }

    #[test]
    fn job_and_cronjob_columns() {
        let job = json!({"spec": {"completions": 3, "parallelism": 1},
            "status": {"succeeded": 1, "startTime": "2025-01-01T00:00:00Z",
                "completionTime": "2025-01-01T00:00:30Z",
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let r = row("Job", &job);
        assert_eq!(
            (&r[1], &r[2], &r[3]),
            (&json!("Complete"), &json!("1/3"), &json!("30s"))
        );
        let r = row("Job", &json!({"spec": {"parallelism": 2}}));
        assert_eq!(
            (&r[1], &r[2], &r[3]),
            (&json!("Running"), &json!("0/1 of 2"), &json!(""))
        );
        let cj = json!({"spec": {"schedule": "* * * * *", "suspend": false}});
        let r = row("CronJob", &cj);
        assert_eq!(
            r[1..6].to_vec(),
            vec![
                json!("* * * * *"),
                json!("<none>"),
                json!("False"),
                json!(0),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn controller_revision_and_daemonset_columns() {
        let cr = json!({"revision": 2, "metadata": {"ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "controller": true}]}});
        assert_eq!(row("ControllerRevision", &cr)[1], "statefulset.apps/web");
        let ds = json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}});
        assert_eq!(row("DaemonSet", &ds)[6], "disk=ssd");
        row("StatefulSet", &json!({}));
        row("ServiceAccount", &json!({}));
    }
}
