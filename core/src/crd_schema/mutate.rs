//! Defaulting and pruning.

use super::*;

pub(super) fn drop_nulls(v: &mut Value, n: Option<&Node>) {
    match v {
        Value::Object(map) => {
            map.retain(|k, x| {
                let s = n.and_then(|n| n.property(k));
                !(x.is_null() && s.is_some_and(|s| !s.nullable && s.default.is_none()))
            });
            for (k, x) in map.iter_mut() {
                drop_nulls(x, n.and_then(|n| n.property(k)));
            }
        }
        Value::Array(items) => {
            for x in items {
                drop_nulls(x, n.and_then(|n| n.items.as_deref()));
            }
        }
        _ => {}
    }
}

pub(super) fn apply_defaults(v: &mut Value, n: &Node) {
    match v {
        Value::Object(map) => {
            for (k, p) in &n.properties {
                if let Some(d) = &p.default
                    && map.get(k).is_none_or(|x| x.is_null() && !p.nullable)
                {
                    map.insert(k.clone(), d.clone());
                }
            }
            for (k, x) in map.iter_mut() {
                if let Some(p) = n.properties.get(k) {
                    apply_defaults(x, p);
                } else if let Some(ap) = &n.additional {
                    if x.is_null() && !ap.nullable {
                        *x = ap.default.clone().unwrap_or(Value::Null);
                    }
                    apply_defaults(x, ap);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = &n.items {
                for x in items.iter_mut() {
                    if x.is_null() && !item.nullable {
                        *x = item.default.clone().unwrap_or(Value::Null);
                    }
                    apply_defaults(x, item);
                }
            }
        }
        _ => {}
    }
}

pub(super) fn prune_key(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// `keep_meta`: the node is a resource root (the object's, or an embedded resource), whose
/// `apiVersion`, `kind` and `metadata` are the server's to prune.
pub(super) fn prune(
    v: &mut Value,
    n: Option<&Node>,
    keep_meta: bool,
    path: &str,
    pruned: &mut Vec<String>,
) {
    if let Some(n) = n
        && n.preserve_unknown
    {
        return skip_prune(v, n, keep_meta, path, pruned);
    }
    match v {
        Value::Object(map) => {
            let Some(n) = n else {
                for k in map.keys() {
                    pruned.push(prune_key(path, k));
                }
                map.clear();
                return;
            };
            map.retain(|k, _| {
                let keep = (keep_meta && META_FIELDS.contains(&k.as_str()))
                    || n.properties.contains_key(k)
                    || n.additional.is_some();
                if !keep {
                    pruned.push(prune_key(path, k));
                }
                keep
            });
            for (k, x) in map.iter_mut() {
                if keep_meta && META_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                let sub = n.property(k);
                let embedded = sub.is_some_and(|s| s.embedded);
                prune(x, sub, embedded, &prune_key(path, k), pruned);
            }
        }
        Value::Array(items) => {
            let item = n.and_then(|n| n.items.as_deref());
            let embedded = item.is_some_and(|s| s.embedded);
            for (i, x) in items.iter_mut().enumerate() {
                prune(x, item, embedded, &format!("{path}[{i}]"), pruned);
            }
        }
        _ => {}
    }
}

pub(super) fn skip_prune(
    v: &mut Value,
    n: &Node,
    keep_meta: bool,
    path: &str,
    pruned: &mut Vec<String>,
) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if keep_meta && META_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(p) = n.property(k) {
                    prune(x, Some(p), p.embedded, &prune_key(path, k), pruned);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = n.items.as_deref() {
                for (i, x) in items.iter_mut().enumerate() {
                    skip_prune(x, item, item.embedded, &format!("{path}[{i}]"), pruned);
                }
            }
        }
        _ => {}
    }
}
