//! Secrets: `stringData` folded into `data`, the keys each well-known type needs, a type that
//! never changes, and `kubectl get secrets`' columns.

use k8s_openapi::api::core::v1 as core;
use serde_json::{Value, json};

use super::data::{
    check_size, decode_base64_leniently, fold_string_data, frozen, normalize_data, validate_data,
};
use super::table_fmt::{CREATED, Column, age, col, name, s};
use super::{KindRules, Typed, typed};
use crate::error::Cause;
use kedge_core::resources::Resource;

pub(super) struct Secret;

static COLUMNS: [Column; 4] = [
    col("Name", "string", 0),
    col("Type", "string", 0),
    col("Data", "integer", 0),
    col("Age", "string", 0),
];

impl KindRules for Secret {
    fn update_checks_first(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        // kubectl create secret generic sends an empty type; kube-apiserver stores Opaque.
        if obj
            .get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            obj["type"] = json!("Opaque");
        }
        normalize_data(obj, "data");
        fold_string_data(obj);
    }

    fn validate(&self, _res: &Resource, obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        if obj.get("stringData").is_some() {
            causes.push(Cause::invalid("stringData", "", "must be a map of strings"));
        }
        let size = validate_data(obj, "data", true, causes);
        check_size(size, causes);
        let payload = |o: &Value| (o.get("type").cloned(), o.get("data").cloned());
        if old.is_none_or(|old| payload(old) != payload(obj)) {
            validate_secret_type(obj, causes);
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_owned);
        if ty(old) != ty(new) {
            let t = ty(new).unwrap_or_default();
            causes.push(Cause::invalid("type", &t, "field is immutable"));
        }
        frozen(old, new, &[("data", true)], causes);
    }

    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }

    fn cells(&self, o: &Value, now: chrono::DateTime<chrono::Utc>) -> Vec<Value> {
        vec![
            name(o),
            json!(s(o, "/type")),
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |d| d.len())
            ),
            json!(age(o, CREATED, now)),
        ]
    }

    fn typed(&self) -> Option<&'static dyn Typed> {
        typed::<core::Secret>()
    }
}

/// The keys each well-known Secret type must carry, as kube-apiserver's `ValidateSecret`
/// checks them: consumers (kubelet's image pulls, ingress controllers, the token controller)
/// rely on them being there.
fn validate_secret_type(obj: &Value, causes: &mut Vec<Cause>) {
    let data = obj.get("data").and_then(Value::as_object);
    let has = |k: &str| data.is_some_and(|d| d.contains_key(k));
    // A value that is not base64 is refused by `validate_data` already.
    let bytes = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .and_then(decode_base64_leniently)
    };
    let required = |k: &str| Cause::required(format!("data[{k}]"));
    match obj.get("type").and_then(Value::as_str).unwrap_or_default() {
        // The token controller needs to know whose token to put in it.
        crate::tokens::SECRET_TYPE
            if obj
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(crate::tokens::SA_NAME_ANNOTATION))
                .and_then(Value::as_str)
                .is_none_or(str::is_empty) =>
        {
            causes.push(Cause::required(format!(
                "metadata.annotations[{}]",
                crate::tokens::SA_NAME_ANNOTATION
            )));
        }
        t @ ("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson") => {
            let key = if t == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            if !has(key) {
                causes.push(required(key));
            } else if let Some(why) = bytes(key).and_then(|b| json_object_error(&b)) {
                causes.push(Cause::invalid(
                    format!("data[{key}]"),
                    "<secret contents redacted>",
                    why,
                ));
            }
        }
        // Either may be empty, but one must be there.
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            causes.push(required("username"));
            causes.push(required("password"));
        }
        "kubernetes.io/ssh-auth" if bytes("ssh-privatekey").is_none_or(|b| b.is_empty()) => {
            causes.push(required("ssh-privatekey"));
        }
        "kubernetes.io/tls" => {
            for k in ["tls.crt", "tls.key"] {
                if !has(k) {
                    causes.push(required(k));
                }
            }
        }
        _ => {}
    }
}

/// Why a docker config (`.dockercfg`, `.dockerconfigjson`) is not a JSON object, or `None`
/// when it is one (or `null`, which Go's `json.Unmarshal` into a map takes as no map).
fn json_object_error(b: &[u8]) -> Option<String> {
    serde_json::from_slice::<Option<serde_json::Map<String, Value>>>(b)
        .err()
        .map(|e| format!("not a JSON object: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::test_support::*;

    /// ValidateSecret's per-type rules: the keys each type needs, worded as kube words them.
    #[test]
    fn secret_types_require_their_keys() {
        let res = by_kind("v1", "Secret").unwrap();
        let secret =
            |ty: &str, data: Value| json!({"metadata": {"name": "s"}, "type": ty, "data": data});
        let check = |ty: &str, data: Value| -> Vec<String> {
            validate(res, &secret(ty, data))
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        let json_cfg = b64(r#"{"auths": {"r.example": {"auth": "dTpw"}}}"#);
        let ok: &[(&str, Value)] = &[
            ("Opaque", json!({})),
            (
                "bootstrap.kubernetes.io/token",
                json!({"token-id": b64("abcdef")}),
            ),
            ("example.com/custom", json!({})),
            (
                "kubernetes.io/dockerconfigjson",
                json!({".dockerconfigjson": json_cfg}),
            ),
            (
                "kubernetes.io/dockercfg",
                json!({".dockercfg": b64("null")}),
            ),
            // Either is enough, even empty.
            ("kubernetes.io/basic-auth", json!({"password": ""})),
            (
                "kubernetes.io/ssh-auth",
                json!({"ssh-privatekey": b64("k")}),
            ),
            ("kubernetes.io/tls", json!({"tls.crt": "", "tls.key": ""})),
        ];
        for (ty, data) in ok {
            assert_eq!(check(ty, data.clone()), Vec::<String>::new(), "{ty}");
        }
        let bad: &[(&str, Value, &[&str])] = &[
            (
                "kubernetes.io/service-account-token",
                json!({}),
                &["metadata.annotations[kubernetes.io/service-account.name]: Required value"],
            ),
            (
                "kubernetes.io/dockerconfigjson",
                json!({"config.json": json_cfg}),
                &["data[.dockerconfigjson]: Required value"],
            ),
            (
                "kubernetes.io/dockerconfigjson",
                json!({".dockerconfigjson": b64(r#"{"auths": "#)}),
                &[
                    "data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": \
                   not a JSON object: EOF while parsing a value at line 1 column 10",
                ],
            ),
            (
                "kubernetes.io/dockercfg",
                json!({".dockercfg": b64("[]")}),
                &[
                    "data[.dockercfg]: Invalid value: \"<secret contents redacted>\": not a \
                   JSON object: invalid type: sequence, expected a map at line 1 column 0",
                ],
            ),
            (
                "kubernetes.io/basic-auth",
                json!({"user": b64("u")}),
                &[
                    "data[username]: Required value",
                    "data[password]: Required value",
                ],
            ),
            (
                "kubernetes.io/ssh-auth",
                json!({"ssh-privatekey": ""}),
                &["data[ssh-privatekey]: Required value"],
            ),
            (
                "kubernetes.io/tls",
                json!({"tls.crt": b64("c")}),
                &["data[tls.key]: Required value"],
            ),
            (
                "kubernetes.io/tls",
                json!({}),
                &[
                    "data[tls.crt]: Required value",
                    "data[tls.key]: Required value",
                ],
            ),
        ];
        for (ty, data, want) in bad {
            assert_eq!(check(ty, data.clone()), *want, "{ty}");
        }
        // stringData counts: it is folded into data before validation.
        let mut s = json!({"metadata": {"name": "s"}, "type": "kubernetes.io/basic-auth",
            "stringData": {"username": "u"}});
        default(res, &mut s);
        assert!(validate(res, &s).is_empty(), "{:?}", validate(res, &s));
        // Stored before these rules (no tls.key): a metadata-only update still goes through,
        // one that touches the data is held to them.
        let old = secret("kubernetes.io/tls", json!({"tls.crt": b64("c")}));
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate_replacing(res, &relabelled, Some(&old)).is_empty());
        let mut changed = old.clone();
        changed["data"]["tls.crt"] = json!(b64("d"));
        assert_eq!(validate_replacing(res, &changed, Some(&old)).len(), 1);
    }

    /// A docker config must be a JSON object (or `null`, as Go's `json.Unmarshal` into a map
    /// takes it); anything else is refused with the parser's reason.
    #[test]
    fn docker_configs_must_be_json_objects() {
        let ok = r#" {"a": [1, -2.5e+3, "x\u00e9\n", true, false, null, {}], "b": {}} "#;
        assert_eq!(json_object_error(ok.as_bytes()), None);
        assert_eq!(json_object_error(b"null"), None);
        let deep = "[".repeat(200_000);
        for bad in [
            "",
            "{\"a\": 1",
            "{\"a\": 1,}",
            "{} {}",
            "12",
            "\"s\"",
            "[1]",
            &deep,
        ] {
            let why = json_object_error(bad.as_bytes()).unwrap_or_default();
            assert!(why.starts_with("not a JSON object: "), "{bad:.20}: {why}");
        }
        assert!(
            json_object_error(b"{\"a\": 1")
                .unwrap()
                .contains("EOF while parsing")
        );
    }
}
