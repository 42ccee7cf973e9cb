//! The data maps of Secrets (`data`, write-only `stringData`) and ConfigMaps (`data`,
//! `binaryData`): base64 as Go reads it, the keys as file names, kube's 1 MiB limit, and what
//! an immutable object may no longer change.

use serde_json::Value;

use super::common::ensure_object;
use crate::error::Cause;

/// `stringData` is write-only, as in kube-apiserver: each entry becomes the base64 `data`
/// entry of that key (replacing one given there) and `stringData` is not stored. Left as it is
/// when a value is not a string, for validation to refuse.
pub(super) fn fold_string_data(obj: &mut Value) {
    use base64::Engine as _;
    let Some(Value::Object(strings)) = obj.get("stringData") else {
        return;
    };
    if !strings.values().all(Value::is_string) {
        return;
    }
    let encoded: Vec<(String, Value)> = strings
        .iter()
        .map(|(k, v)| {
            let text = v.as_str().unwrap_or_default();
            let b64 = base64::engine::general_purpose::STANDARD.encode(text);
            (k.clone(), Value::String(b64))
        })
        .collect();
    if let Some(m) = obj.as_object_mut() {
        m.remove("stringData");
    }
    let data = ensure_object(obj, "data");
    for (k, v) in encoded {
        data.insert(k, v);
    }
}

/// kube-apiserver's limit on the data of one Secret or ConfigMap.
pub(super) const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Base64 as Go's decoder reads it for a `[]byte` field: line breaks ignored, non-zero
/// trailing bits tolerated (`base64 FILE` output pasted into YAML is accepted).
pub(super) fn decode_base64_leniently(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let compact: String = s.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    LENIENT.decode(compact).ok()
}

/// The bytes fields of Secrets (`data`) and ConfigMaps (`binaryData`) are stored as kube
/// stores them after its decode/encode round trip: canonical base64. A value that is not
/// base64 is left for validation to refuse; a `null` map is no map.
pub(super) fn normalize_data(obj: &mut Value, bytes_field: &str) {
    use base64::Engine as _;
    if let Some(m) = obj.as_object_mut() {
        for f in ["data", "stringData", "binaryData"] {
            if m.get(f).is_some_and(Value::is_null) {
                m.remove(f);
            }
        }
    }
    if let Some(Value::Object(map)) = obj.get_mut(bytes_field) {
        for v in map.values_mut() {
            if let Some(bytes) = v.as_str().and_then(decode_base64_leniently) {
                *v = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
    }
}

/// Checks the keys of a ConfigMap's or Secret's map `field` (file names in a volume, hence
/// kube's `IsConfigMapKey` rules) and its values (strings; base64 if `bytes`). Returns the
/// size of the values, in bytes, which is what kube's 1 MiB limit counts.
pub(super) fn validate_data(
    obj: &Value,
    field: &str,
    bytes: bool,
    causes: &mut Vec<Cause>,
) -> usize {
    use base64::Engine as _;
    let Some(map) = obj.get(field) else { return 0 };
    let Some(map) = map.as_object() else {
        causes.push(Cause::invalid(field, "", "must be a map of strings"));
        return 0;
    };
    let mut size = 0;
    for (k, v) in map {
        let at = format!("{field}[{k}]");
        let why = if k.is_empty() || k.len() > 253 {
            Some("must be no more than 253 characters and not empty")
        } else if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Some(
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
                 (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation \
                 is '[-._a-zA-Z0-9]+')",
            )
        } else if k == "." || k == ".." || k.starts_with("..") {
            Some("must not be '.' or '..' or start with '..'")
        } else {
            None
        };
        if let Some(why) = why {
            causes.push(Cause::invalid(at.clone(), k, why));
        }
        match v.as_str() {
            Some(s) if !bytes => size += s.len(),
            Some(s) => match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(b) => size += b.len(),
                Err(_) => causes.push(Cause::invalid(at, "", "must be base64-encoded bytes")),
            },
            None => causes.push(Cause::invalid(at, "", "must be a string")),
        }
    }
    size
}

/// kube's limit on the size of the values (see [`validate_data`]).
pub(super) fn check_size(size: usize, causes: &mut Vec<Cause>) {
    if size > MAX_DATA_BYTES {
        causes.push(Cause::invalid(
            "data",
            "",
            format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        ));
    }
}

/// Kubelets stop watching an immutable object, so only its metadata may change (and it may be
/// deleted), as in kube: `immutable` stays set and each of `maps` (a field, and whether its
/// values are base64) keeps its entries.
pub(super) fn frozen(old: &Value, new: &Value, maps: &[(&str, bool)], causes: &mut Vec<Cause>) {
    if old.get("immutable") == Some(&Value::Bool(true)) {
        const WHY: &str = "field is immutable when `immutable` is set";
        if new.get("immutable") != Some(&Value::Bool(true)) {
            causes.push(Cause::forbidden("immutable", WHY));
        }
        for &(field, bytes) in maps {
            if data_entries(old, field, bytes) != data_entries(new, field, bytes) {
                causes.push(Cause::forbidden(field, WHY));
            }
        }
    }
}

/// The entries of a Secret's or ConfigMap's map `field` as compared for an immutable object:
/// base64 values (`bytes`) by their bytes, and no map the same as an empty one.
fn data_entries(obj: &Value, field: &str, bytes: bool) -> Vec<(String, Value)> {
    let mut entries: Vec<(String, Value)> = obj
        .get(field)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let decoded = v
                .as_str()
                .filter(|_| bytes)
                .and_then(decode_base64_leniently);
            (k.clone(), decoded.map_or_else(|| v.clone(), Value::from))
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::test_support::*;

    /// As kube-apiserver: `stringData` lands base64-encoded in `data` (winning over a `data`
    /// entry of the same key) and is not stored; keys must be file names; data is base64.
    #[test]
    fn secret_string_data_is_folded_into_data_and_keys_are_checked() {
        let res = by_kind("v1", "Secret").unwrap();
        let mut s = json!({"metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "token-id": "abcdef"}});
        default(res, &mut s);
        assert_eq!(s["type"], "Opaque");
        assert_eq!(s.get("stringData"), None);
        assert_eq!(
            s["data"],
            json!({"a": "bmV3", "keep": "eA==", "token-id": "YWJjZGVm"})
        );
        assert!(validate(res, &s).is_empty(), "{:?}", validate(res, &s));

        let mut bad = json!({"metadata": {"name": "s"}, "stringData": {"n": 1}});
        default(res, &mut bad);
        let fields: Vec<String> = validate(res, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["stringData"]);

        let bad = json!({"metadata": {"name": "s"},
            "data": {"a b": "eA==", "..x": "eA==", "ok": "not base64!"}});
        let fields: Vec<String> = validate(res, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["data[..x]", "data[a b]", "data[ok]"]);

        let cm = by_kind("v1", "ConfigMap").unwrap();
        let big = "x".repeat(MAX_DATA_BYTES + 1);
        let causes = validate(cm, &json!({"metadata": {"name": "c"}, "data": {"k": big}}));
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "data");
        let ok = json!({"metadata": {"name": "c"}, "data": {"app.properties": "a=1"}});
        assert!(validate(cm, &ok).is_empty());

        // As kube counts it: the values' bytes, decoded; keys do not count.
        let just = "x".repeat(MAX_DATA_BYTES);
        let b64 = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&just)
        };
        let s = json!({"metadata": {"name": "s"}, "data": {"k": b64}});
        assert!(validate(res, &s).is_empty());

        // `base64 FILE` output (line breaks, stray trailing bits) is read as Go reads it and
        // stored canonical; null maps are no maps.
        let mut s = json!({"metadata": {"name": "s"}, "data": {"k": "aGVs\nbG8=\n", "t": "YR=="},
            "stringData": null});
        default(res, &mut s);
        assert_eq!(s["data"], json!({"k": "aGVsbG8=", "t": "YQ=="}));
        assert!(validate(res, &s).is_empty(), "{:?}", validate(res, &s));
        let mut c = json!({"metadata": {"name": "c"}, "data": null});
        default(cm, &mut c);
        assert!(validate(cm, &c).is_empty());

        // ConfigMap: binaryData is base64, and a key may not be in both maps.
        let c = json!({"metadata": {"name": "c"}, "data": {"a": "1"},
            "binaryData": {"a": "MQ==", "b": "%%"}});
        let fields: Vec<String> = validate(cm, &c).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["binaryData[a]", "binaryData[b]"]);
    }

    /// ValidateSecretUpdate / ValidateConfigMapUpdate: a Secret's type never changes; an
    /// immutable object keeps its data and stays immutable, while its metadata may change.
    #[test]
    fn immutable_secrets_and_config_maps_keep_their_data() {
        let secret = by_kind("v1", "Secret").unwrap();
        let cm = by_kind("v1", "ConfigMap").unwrap();
        let msgs = |c: Vec<Cause>| -> Vec<String> {
            c.into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        let forbidden =
            |f: &str| format!("{f}: Forbidden: field is immutable when `immutable` is set");

        let old = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}});
        let mut retyped = old.clone();
        retyped["type"] = json!("kubernetes.io/tls");
        assert_eq!(
            msgs(validate_update(secret, &old, &retyped)),
            ["type: Invalid value: \"kubernetes.io/tls\": field is immutable"]
        );
        // Not immutable: data may change, and immutable may be set.
        let mut changed = old.clone();
        changed["data"]["k"] = json!("dw==");
        changed["immutable"] = json!(true);
        assert!(validate_update(secret, &old, &changed).is_empty());

        let frozen = changed;
        let mut relabeled = frozen.clone();
        relabeled["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate_update(secret, &frozen, &relabeled).is_empty());
        // The same bytes in another base64 spelling are no change.
        let mut respelled = frozen.clone();
        respelled["data"]["k"] = json!("dx==");
        assert!(validate_update(secret, &frozen, &respelled).is_empty());
        let mut thawed = frozen.clone();
        thawed["immutable"] = json!(false);
        thawed["data"]["k2"] = json!("eA==");
        thawed["type"] = json!("example.com/x");
        assert_eq!(
            msgs(validate_update(secret, &frozen, &thawed)),
            [
                "type: Invalid value: \"example.com/x\": field is immutable".to_string(),
                forbidden("immutable"),
                forbidden("data"),
            ]
        );
        let mut unset = frozen.clone();
        unset.as_object_mut().unwrap().remove("immutable");
        assert_eq!(
            msgs(validate_update(secret, &frozen, &unset)),
            [forbidden("immutable")]
        );
        // stringData is folded into data before the comparison.
        let mut via_strings = frozen.clone();
        via_strings["stringData"] = json!({"k": "other"});
        default(secret, &mut via_strings);
        assert_eq!(
            msgs(validate_update(secret, &frozen, &via_strings)),
            [forbidden("data")]
        );

        // ConfigMap: data and binaryData; no data is the same as an empty map.
        let frozen = json!({"metadata": {"name": "c"}, "immutable": true,
            "binaryData": {"b": "AAE="}});
        let mut empty = frozen.clone();
        empty["data"] = json!({});
        assert!(validate_update(cm, &frozen, &empty).is_empty());
        let mut changed = frozen.clone();
        changed["data"] = json!({"a": "1"});
        changed["binaryData"] = json!({});
        changed["immutable"] = json!(false);
        assert_eq!(
            msgs(validate_update(cm, &frozen, &changed)),
            [
                forbidden("immutable"),
                forbidden("data"),
                forbidden("binaryData")
            ]
        );
    }

    /// Through the API: a patch of an immutable object's data is a 422 Invalid naming every
    /// cause (update rules first, as kube orders them) and stores nothing; metadata patches
    /// and the delete go through.
    #[test]
    fn api_refuses_data_changes_of_immutable_objects() {
        use crate::ops::{Api, DeleteOptions, WriteOptions, system_clock};
        use kedge_core::patch::PatchType;
        use kedge_store::redb::{Options, RedbStore};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("s"), Options::default()).unwrap();
        let api = Api::new(Arc::new(store), system_clock());
        let w = WriteOptions::default();
        let (nsr, secrets, cms) = (
            by_kind("v1", "Namespace").unwrap(),
            by_kind("v1", "Secret").unwrap(),
            by_kind("v1", "ConfigMap").unwrap(),
        );
        api.create(nsr, "", json!({"metadata": {"name": "t"}}), &w)
            .unwrap();
        let patch = |res, name: &str, body: Value| {
            api.patch(res, "t", name, None, &body, PatchType::Merge, &w)
        };

        let tls = json!({"metadata": {"name": "web"}, "type": "kubernetes.io/tls",
            "immutable": true, "stringData": {"tls.crt": "C", "tls.key": "K"}});
        let created = api.create(secrets, "t", tls, &w).unwrap();
        let e = patch(secrets, "web", json!({"data": {"tls.key": null}})).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert_eq!(
            e.message,
            "Secret \"web\" is invalid: [data: Forbidden: field is immutable when `immutable` \
             is set, data[tls.key]: Required value]"
        );
        let e = patch(secrets, "web", json!({"type": "Opaque", "immutable": null})).unwrap_err();
        assert_eq!(
            e.message,
            "Secret \"web\" is invalid: [type: Invalid value: \"Opaque\": field is immutable, \
             immutable: Forbidden: field is immutable when `immutable` is set]"
        );
        assert_eq!(api.get(secrets, "t", "web").unwrap(), created);
        let labeled = patch(secrets, "web", json!({"metadata": {"labels": {"a": "b"}}})).unwrap();
        assert_eq!(labeled["metadata"]["labels"], json!({"a": "b"}));
        assert_eq!(labeled["data"], created["data"]);

        // A missing key is refused on create too, and nothing is stored.
        let half = json!({"metadata": {"name": "half"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "C"}});
        let e = api.create(secrets, "t", half, &w).unwrap_err();
        assert_eq!(
            e.message,
            "Secret \"half\" is invalid: data[tls.key]: Required value"
        );
        assert_eq!(api.get(secrets, "t", "half").unwrap_err().code, 404);

        let c = json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}});
        api.create(cms, "t", c, &w).unwrap();
        patch(cms, "cfg", json!({"immutable": true})).unwrap();
        let e = patch(cms, "cfg", json!({"data": {"a": "2"}})).unwrap_err();
        assert_eq!(
            e.message,
            "ConfigMap \"cfg\" is invalid: data: Forbidden: field is immutable when `immutable` \
             is set"
        );
        assert_eq!(api.get(cms, "t", "cfg").unwrap()["data"], json!({"a": "1"}));
        api.delete(cms, "t", "cfg", &DeleteOptions::default())
            .unwrap();
        assert_eq!(api.get(cms, "t", "cfg").unwrap_err().code, 404);
    }
}
