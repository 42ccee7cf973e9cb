//! Fuzz targets for kedge-core's parsers of user and network input (see fuzz/driver.rs):
//! `cargo test -p kedge-core --test fuzz` runs each for `KEDGE_FUZZ_SECS` (default 2) after
//! replaying `fuzz/corpus/<target>/`; `make fuzz` runs them long.

#[path = "../../fuzz/driver.rs"]
mod driver;

use bytes::BytesMut;
use driver::{run, target, text};
use kedge_core::apply::{self, ApplyRequest};
use kedge_core::channel::{Frame, client_message};
use kedge_core::crd_schema::Schema;
use kedge_core::patch::{self, PatchType};
use kedge_core::quantity::{parse_bytes, parse_cpu_millis};
use kedge_core::selector::{FieldSelector, Selector};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const JSON_DICT: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1.5",
    "{}",
    "[]",
    "\"a\"",
    "\"name\"",
    "\"spec\"",
    "\"metadata\"",
    "\"containers\"",
    "\"$patch\"",
    "\"delete\"",
    "\"replace\"",
    "\"merge\"",
    "\"$retainKeys\"",
    "\"$setElementOrder/containers\"",
    "\"$deleteFromPrimitiveList/finalizers\"",
    "\"op\"",
    "\"path\"",
    "\"value\"",
    "\"from\"",
    "\"add\"",
    "\"remove\"",
    "\"move\"",
    "\"copy\"",
    "\"test\"",
    "\"/a\"",
    "\"/-\"",
    "\"/0\"",
    "\"~1\"",
    "\"~0\"",
    "\"type\"",
    "\"object\"",
    "\"array\"",
    "\"string\"",
    "\"integer\"",
    "\"properties\"",
    "\"items\"",
    "\"default\"",
    "\"x-kubernetes-list-type\"",
    "\"x-kubernetes-list-map-keys\"",
    "\"x-kubernetes-preserve-unknown-fields\"",
    "\"x-kubernetes-embedded-resource\"",
    "\"x-kubernetes-int-or-string\"",
    "\"pattern\"",
    "\"enum\"",
    "\"minimum\"",
    "\"maxLength\"",
    "\"maxItems\"",
    "\"format\"",
    "\"nullable\"",
    "\"additionalProperties\"",
    "\"allOf\"",
    "\"anyOf\"",
    "\"oneOf\"",
    "\"not\"",
    "\"map\"",
    "\"set\"",
    "\"atomic\"",
    "\"granular\"",
    "\"required\"",
    "\"labels\"",
    "\"finalizers\"",
    "\"f:spec\"",
    "\"k:{\\\"name\\\":\\\"a\\\"}\"",
    "\"v:1\"",
    "\".\"",
    "\"managedFields\"",
    "\"fieldsV1\"",
    "\"manager\"",
    "\"operation\"",
    "\"Apply\"",
];

fn json_of(b: &[u8]) -> Option<Value> {
    serde_json::from_slice(b).ok()
}

/// `[first, second]` of a two-element JSON array input.
fn pair(b: &[u8]) -> Option<(Value, Value)> {
    match json_of(b)? {
        Value::Array(mut a) if a.len() == 2 => {
            let second = a.pop()?;
            Some((a.pop()?, second))
        }
        _ => None,
    }
}

const SELECTOR_DICT: &[&str] = &[
    "=",
    "==",
    "!=",
    "!",
    " in ",
    " notin ",
    "(",
    ")",
    ",",
    " ",
    "in",
    "notin",
    "app",
    "a.b/c",
    "example.com/",
    "-",
    "_",
    ".",
    "x",
    "<",
    ">",
    "\t",
];

fn labels() -> [BTreeMap<String, String>; 3] {
    [
        BTreeMap::new(),
        BTreeMap::from([("app".into(), "web".into()), ("tier".into(), "fe".into())]),
        BTreeMap::from([("a.b/c".into(), "x".into()), ("x".into(), "".into())]),
    ]
}

#[test]
fn fuzz_label_selector() {
    let sets = labels();
    run(target("label_selector", 4096, SELECTOR_DICT), |b| {
        let s = text(b);
        let Ok(sel) = Selector::parse(&s) else {
            return false;
        };
        // Round trip: what kedge prints (e.g. in a table, an error) parses to the same
        // selector and matches the same labels.
        let printed = sel.to_string();
        let again = Selector::parse(&printed)
            .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(again, sel, "{s:?} → {printed:?}");
        for l in &sets {
            assert_eq!(sel.matches(l), again.matches(l));
        }
        true
    });
}

#[test]
fn fuzz_field_selector() {
    let obj = json!({"metadata": {"name": "a", "namespace": "b"}, "spec": {"nodeName": "n"},
        "status": {"phase": "Running"}});
    run(
        target("field_selector", 4096, SELECTOR_DICT),
        |b| match FieldSelector::parse(&text(b), &["spec.nodeName", "status.phase"]) {
            Ok(f) => {
                f.matches(&obj);
                f.equals("metadata.name");
                true
            }
            Err(_) => false,
        },
    );
}

#[test]
fn fuzz_quantity() {
    let dict = &[
        "m",
        "Ki",
        "Mi",
        "Gi",
        "Ti",
        "Pi",
        "Ei",
        "n",
        "u",
        "k",
        "M",
        "G",
        "T",
        "P",
        "E",
        "e",
        "e-",
        "E+",
        ".",
        "-",
        "+",
        "0",
        "9",
        " ",
        "e9999999999",
    ];
    run(target("quantity", 256, dict), |b| {
        let s = text(b);
        let bytes = parse_bytes(&s);
        let cpu = parse_cpu_millis(&s);
        // Round trip: the integer kedge derived parses back to itself.
        if let Ok(n) = bytes {
            assert_eq!(parse_bytes(&n.to_string()), Ok(n), "{s:?}");
        }
        if let Ok(m) = cpu {
            assert_eq!(parse_cpu_millis(&format!("{m}m")), Ok(m), "{s:?}");
        }
        bytes.is_ok() || cpu.is_ok()
    });
}

fn patch_target(name: &str, kind: PatchType) {
    run(target(name, 16 << 10, JSON_DICT), |b| {
        let Some((doc, p)) = pair(b) else {
            return false;
        };
        let Ok(out) = patch::apply(&doc, &p, kind) else {
            return false;
        };
        if kind == PatchType::Merge {
            // RFC 7386: a merge patch is idempotent.
            let twice = patch::apply(&out, &p, kind).expect("second merge patch");
            assert_eq!(twice, out, "merge patch is not idempotent");
        }
        true
    });
}

#[test]
fn fuzz_merge_patch() {
    patch_target("merge_patch", PatchType::Merge);
}

#[test]
fn fuzz_json_patch() {
    patch_target("json_patch", PatchType::Json);
}

#[test]
fn fuzz_strategic_merge_patch() {
    patch_target("strategic_merge_patch", PatchType::Strategic);
}

#[test]
fn fuzz_server_side_apply() {
    run(target("server_side_apply", 16 << 10, JSON_DICT), |b| {
        let Some((live, config)) = pair(b) else {
            return false;
        };
        let managed = apply::managed_fields(&live);
        // Managed fields round-trip through their JSON form.
        for e in &managed {
            let back = apply::Entry::from_json(&e.to_json()).expect("entry round trip");
            assert_eq!(back.fields, e.fields);
        }
        let live = live.is_object().then_some(&live);
        let req = ApplyRequest {
            manager: "fuzz",
            api_version: "v1",
            force: b.len() % 2 == 0,
            now: "2026-01-01T00:00:00Z",
            shapes: None,
        };
        apply::apply(live, &managed, &config, &req).is_ok()
    });
}

#[test]
fn fuzz_crd_schema() {
    run(target("crd_schema", 16 << 10, JSON_DICT), |b| {
        let Some((schema, obj)) = pair(b) else {
            return false;
        };
        let Ok(schema) = Schema::parse(&schema) else {
            return false;
        };
        // The API server's order: prune, default, validate.
        let mut obj = obj;
        schema.prune(&mut obj);
        schema.default(&mut obj);
        schema.validate(&obj);
        schema.list_type_at(&["spec", "items"]);
        schema.map_type_at(&["spec"]);
        // Server-side apply of the object as a custom kind: list and map types from the
        // schema, over itself as the live object (another manager owning every field).
        let live = json!({"metadata": {"managedFields": [{"manager": "other",
            "operation": "Apply", "apiVersion": "x/v1", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {}}}]}, "spec": obj.get("spec").cloned().unwrap_or(Value::Null)});
        let managed = apply::managed_fields(&live);
        let req = ApplyRequest {
            manager: "fuzz",
            api_version: "x/v1",
            force: false,
            now: "2026-01-01T00:00:00Z",
            shapes: Some(&schema),
        };
        let _ = apply::apply(Some(&live), &managed, &obj, &req);
        true
    });
}

#[test]
fn fuzz_channel_frames() {
    let dict = &[
        "\x00\x00\x00\x00",
        "\x00\x10\x00\x00",
        "\x00\x7f\x7f\x7f",
        "{\"Width\":80,\"Height\":24}",
    ];
    run(target("channel_frames", 64 << 10, dict), |b| {
        // The agent/server stream framing: decode everything, re-encoding each frame gives
        // back exactly the bytes it was decoded from.
        let mut buf = BytesMut::from(b);
        let mut consumed = 0;
        let mut ok = false;
        loop {
            let before = buf.len();
            match Frame::decode(&mut buf) {
                Ok(Some(f)) => {
                    let used = before - buf.len();
                    let mut out = BytesMut::new();
                    f.encode(&mut out);
                    assert_eq!(&out[..], &b[consumed..consumed + used]);
                    consumed += used;
                    ok = true;
                    // Each frame also read as a WebSocket client message, both versions.
                    client_message(&f.payload, true);
                    client_message(&f.payload, false);
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
        client_message(b, true);
        ok
    });
}

#[test]
fn fuzz_log_frames() {
    let dict = &["0-0-0 0\n", "2049-131-4096 ", "\n", "18446744073709551615"];
    run(target("log_frames", 64 << 10, dict), |b| {
        // A node's framed log stream as the server reads it: whole frames come out, each
        // no longer than what came in, and what is left is a prefix of one frame.
        let mut buf = BytesMut::from(b);
        let before = buf.len();
        match kedge_core::logframe::Frame::split(&mut buf) {
            Ok(frames) => {
                let payload: usize = frames.iter().map(|(_, r)| r.len()).sum();
                assert!(payload + buf.len() <= before);
                for (cursor, _) in &frames {
                    let text = cursor.to_string();
                    assert_eq!(
                        text.parse::<kedge_core::logframe::LogCursor>().ok(),
                        Some(*cursor)
                    );
                }
                !frames.is_empty()
            }
            Err(_) => false,
        }
    });
}

// Regression tests for what the fuzzers found (the inputs are also in the corpus).

/// `k in (,)` parsed (as the set holding "") but printed as `k in ()`, which kedge refused;
/// Kubernetes reads `()` as that same set.
#[test]
fn regression_label_selector_empty_value_set() {
    let sel = Selector::parse("k in (,)").unwrap();
    assert_eq!(sel.to_string(), "k in ()");
    assert_eq!(Selector::parse("k in ()").unwrap(), sel);
    let empty = BTreeMap::from([("k".to_string(), String::new())]);
    assert!(sel.matches(&empty));
    assert!(!sel.matches(BTreeMap::from([("k".to_string(), "x".to_string())])));
}

/// The driver itself: a target that panics on a corpus input fails the test, naming it.
#[test]
#[should_panic(expected = "corpus file seed0: fuzz quantity: panic \"boom\"")]
fn driver_reports_a_panicking_input() {
    run(target("quantity", 256, &[]), |b| {
        assert!(b != b"100m", "boom");
        true
    });
}
