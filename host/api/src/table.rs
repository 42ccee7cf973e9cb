//! Server-side printing: `meta.k8s.io/v1` Tables with the columns kubectl users know. Each
//! kind's columns and cells are its [`kinds::KindRules`]; the cell formatting they share is in
//! [`kinds::table_fmt`].

use serde_json::{Value, json};

use crate::error::{ApiError, Result};
use crate::kinds;
use kedge_core::resources::Resource;

pub(crate) use kinds::table_fmt::map_selector_string;

/// `TableOptions.includeObject`: what each row carries besides its cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    /// No `object` at all.
    None,
    /// A `PartialObjectMetadata`: enough for `--show-labels` and `-L`.
    #[default]
    Metadata,
    /// The whole object, which kubectl asks for to sort by (`--sort-by`) a field outside
    /// the metadata.
    Object,
}

impl IncludeObject {
    /// The `includeObject` query parameter (absent or empty: `Metadata`), refused with
    /// kube-apiserver's wording when it is none of the three.
    pub(crate) fn parse(v: Option<&str>) -> Result<Self> {
        match v.unwrap_or_default() {
            "" | "Metadata" => Ok(Self::Metadata),
            "None" => Ok(Self::None),
            "Object" => Ok(Self::Object),
            other => Err(ApiError::bad_request(format!(
                "Unable to convert to Table as requested: includeObject: Invalid value: {other:?}: \
                 must be 'Metadata', 'Object', 'None', or empty"
            ))),
        }
    }
}

/// A Table of `items`; `list_meta` is the list's metadata (resourceVersion, continue). The
/// cells read the stored form; under [`IncludeObject::Object`] each row holds its item as
/// given, which a caller serving another version converts after (see [`map_objects`]).
pub(crate) fn table(
    res: &Resource,
    items: Vec<Value>,
    list_meta: Value,
    now: chrono::DateTime<chrono::Utc>,
    include: IncludeObject,
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
        .into_iter()
        .map(|mut o| {
            let mut row = json!({"cells": rules.cells(&o, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get_mut("metadata").map_or_else(|| json!({}), Value::take),
                    });
                }
                IncludeObject::Object => row["object"] = o,
            }
            row
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

/// Passes every row's embedded object through `f` (a retired version's conversion: it leaves
/// a `PartialObjectMetadata` as it is).
pub(crate) fn map_objects(t: &mut Value, f: impl Fn(Value) -> Result<Value>) -> Result<()> {
    let rows = t.get_mut("rows").and_then(Value::as_array_mut);
    for row in rows.into_iter().flatten() {
        if let Some(o) = row.get_mut("object") {
            *o = f(o.take())?;
        }
    }
    Ok(())
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

    /// `includeObject`: absent, empty and `Metadata` mean PartialObjectMetadata; the values
    /// are case-sensitive, as kube-apiserver's are, and anything else is a 400.
    #[test]
    fn include_object_values_and_the_bad_request() {
        for (v, want) in [
            (None, IncludeObject::Metadata),
            (Some(""), IncludeObject::Metadata),
            (Some("Metadata"), IncludeObject::Metadata),
            (Some("None"), IncludeObject::None),
            (Some("Object"), IncludeObject::Object),
        ] {
            assert_eq!(IncludeObject::parse(v).unwrap(), want, "{v:?}");
        }
        for bad in ["object", "Everything"] {
            let e = IncludeObject::parse(Some(bad)).unwrap_err();
            assert_eq!((e.code, e.reason), (400, "BadRequest"));
            assert_eq!(
                e.message,
                format!(
                    "Unable to convert to Table as requested: includeObject: Invalid value: \
                     \"{bad}\": must be 'Metadata', 'Object', 'None', or empty"
                )
            );
        }
    }

    /// What each row embeds: nothing, the metadata alone, or the whole object (what kubectl
    /// needs for `--sort-by=.data.k`); the cells are the same in all three.
    #[test]
    fn rows_embed_what_include_object_asks() {
        let res = RESOURCES.iter().find(|r| r.kind == "ConfigMap").unwrap();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "d", "labels": {"x": "1"}},
            "data": {"k": "v"}});
        let now = chrono::Utc::now();
        let rows = |include| {
            let t = table(res, vec![cm.clone()], json!({}), now, include);
            assert_eq!(
                (&t["kind"], &t["apiVersion"]),
                (&json!("Table"), &json!("meta.k8s.io/v1"))
            );
            t["rows"].as_array().unwrap().clone()
        };
        let none = rows(IncludeObject::None);
        assert_eq!(none.len(), 1);
        assert!(none[0].get("object").is_none(), "{none:?}");
        let meta = rows(IncludeObject::Metadata);
        assert_eq!(
            meta[0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": cm["metadata"]})
        );
        let full = rows(IncludeObject::Object);
        assert_eq!(full[0]["object"], cm);
        assert_eq!(none[0]["cells"], meta[0]["cells"]);
        assert_eq!(meta[0]["cells"], full[0]["cells"]);
        assert_eq!(full[0]["cells"][0], "a");
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
