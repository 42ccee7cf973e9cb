//! Request bodies, parsed with bounds: any body the API accepts parses or is refused in tens of
//! milliseconds, whatever its shape, and never on the async workers' time.
//!
//! JSON goes to serde_json (nesting capped at 128). YAML (`application/yaml` and
//! server-side apply's `application/apply-patch+yaml`) goes to serde-saphyr, a streaming,
//! unsafe-free parser whose budgets stop a hostile document while it is being read: libyaml
//! (behind serde_yaml) first loads every event of a document and is quadratic in nesting, so
//! 100 KB of `{a: {a: …` took 30 s. YAML whose text is JSON (what kubectl sends for apply)
//! takes the JSON path.

use serde_json::Value;

/// The largest request body: the largest object a store keeps (etcd's 1.5 MiB, which bounds
/// a Kubernetes object in effect) and room for a patch's or a list's wrapping. Bigger bodies
/// could only produce objects too large to store, and cost their parse regardless.
pub const MAX_BODY: usize = kedge_store::MAX_OBJECT_BYTES + 64 * 1024;

/// Nesting depth of YAML bodies: serde-saphyr's default, which keeps its recursion within a
/// 2 MiB thread stack even in a debug build (JSON keeps serde_json's 128; a Kubernetes
/// object nests about twenty deep).
pub(crate) const YAML_MAX_DEPTH: usize = 64;

/// Nodes (scalars, sequences, mappings) of a YAML body: a manifest has hundreds; the slowest
/// shape of 16,384 parses in ~15 ms here (`--bench memory`). Bigger documents can be sent
/// as JSON.
pub const YAML_MAX_NODES: usize = 16_384;

/// Structural tokens (`{`, `[`, `:`, `,` outside strings; about one per value) of a JSON
/// body: a ConfigMap of 50,000 short keys has ~100,000, a 1.5 MiB pod of 10,000 env
/// entries ~40,000; the slowest shape of 150,000 parses in ~24 ms here. Counted before
/// parsing, at ~1 GB/s.
pub const JSON_MAX_TOKENS: usize = 150_000;

/// Bodies larger than this are parsed off the async workers.
const INLINE_BYTES: usize = 64 * 1024;

fn off_workers<T>(len: usize, f: impl FnOnce() -> T) -> T {
    if len > INLINE_BYTES {
        kedge_store::blocking(f)
    } else {
        f()
    }
}

/// The answer to a body over [`MAX_BODY`], in kube-apiserver's words.
pub(crate) fn too_large(_: axum::Error) -> super::ApiError {
    super::ApiError::new(
        413,
        "RequestEntityTooLarge",
        format!("Request entity too large: limit is {MAX_BODY}"),
    )
}

/// A JSON body, or the error to answer 400 with.
pub fn json(body: &[u8]) -> Result<Value, String> {
    off_workers(body.len(), || {
        check_json_tokens(body)?;
        serde_json::from_slice(body).map_err(|e| e.to_string())
    })
}

/// Refuses a JSON text of more than [`JSON_MAX_TOKENS`] structural tokens, before any
/// parsing: a parse allocates per value, and deep or tiny values cost ~100-170 ns each.
fn check_json_tokens(body: &[u8]) -> Result<(), String> {
    let (mut tokens, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' | b':' | b',' => tokens += 1,
            _ => {}
        }
    }
    if tokens > JSON_MAX_TOKENS {
        return Err(format!(
            "the body has {tokens} JSON values, more than the {JSON_MAX_TOKENS} kedge parses in one request"
        ));
    }
    Ok(())
}

/// A YAML body (one document), or the error to answer 400 with.
pub fn yaml(body: &[u8]) -> Result<Value, String> {
    off_workers(body.len(), || parse_yaml(body))
}

fn parse_yaml(body: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    if matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'[')) {
        check_json_tokens(body)?;
        match serde_json::from_str(text) {
            Ok(v) => return Ok(v),
            // Deeper than JSON allows is refused, whichever parser would see it.
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
                return Err(e.to_string());
            }
            // Flow-style YAML that is not JSON (`{a: b}`): the YAML parser decides.
            Err(_) => {}
        }
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = YAML_MAX_DEPTH;
    budget.flow_nesting_limit = YAML_MAX_DEPTH;
    budget.max_nodes = YAML_MAX_NODES;
    budget.max_events = 2 * YAML_MAX_NODES;
    budget.max_aliases = 1024;
    budget.max_recorded_anchor_events = 2 * YAML_MAX_NODES;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // YAML 1.1 numbers and booleans, as Kubernetes' sigs.k8s.io/yaml (go-yaml v2) reads
    // them: `010` is 8, `yes` is true.
    options.legacy_octal_numbers = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    #[test]
    fn yaml_and_json_bodies_parse() {
        let v = yaml(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n")
            .unwrap();
        assert_eq!(v["metadata"]["name"], "a");
        assert_eq!(
            yaml(br#"{"a": [1, {"b": null}]}"#).unwrap(),
            json!({"a": [1, {"b": null}]})
        );
        assert_eq!(yaml(b"{a: b}").unwrap(), json!({"a": "b"}));
        assert_eq!(
            yaml(b"---\nn: 3\ns: '3'\n").unwrap(),
            json!({"n": 3, "s": "3"})
        );
        assert!(yaml(b"a: 1\n---\nb: 2\n").is_err(), "one document");
        assert!(yaml(b"a: [").is_err());
    }

    /// Regression (hardening issue, finding 2): nesting is refused while parsing, in well
    /// under a second, not after a quadratic parse (a 200 KB `{a: ` chain took 8.5 s).
    /// Timing here only guards against the quadratic blow-up; the bench prints figures.
    #[test]
    fn hostile_yaml_is_refused_quickly() {
        let n = 200_000;
        let cases = [
            "{a: ".repeat(n / 4),
            "[".repeat(n),
            "- ".repeat(n / 2),
            "? ".repeat(n / 2),
            format!("[{}]", "1,".repeat(n / 2)),
            "a0: &a0 [x,x,x,x,x,x,x,x,x,x]\na1: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0]\na2: &a2 [*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1]\na3: &a3 [*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2]\na4: &a4 [*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3]\na5: [*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4]\n".to_string(),
        ];
        for body in cases {
            let start = Instant::now();
            assert!(yaml(body.as_bytes()).is_err(), "{}", &body[..20]);
            assert!(start.elapsed() < Duration::from_secs(2), "{}", &body[..20]);
        }
        // Nesting within the limits is fine, in JSON and YAML alike.
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(yaml(ok.as_bytes()).is_ok());
        let ok = format!("{}1{}", "{a: ".repeat(60), "}".repeat(60));
        assert!(yaml(ok.as_bytes()).is_ok());
        let deep = format!("{}1{}", "{a: ".repeat(70), "}".repeat(70));
        assert!(yaml(deep.as_bytes()).is_err());
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(
            yaml(deep.as_bytes())
                .unwrap_err()
                .contains("recursion limit")
        );
        assert!(
            json(deep.as_bytes())
                .unwrap_err()
                .contains("recursion limit")
        );
        // Too many values in JSON: counted, not parsed; what strings hold does not count.
        let many = format!("[{}1]", "1,".repeat(JSON_MAX_TOKENS));
        assert!(json(many.as_bytes()).unwrap_err().contains("JSON values"));
        assert!(yaml(many.as_bytes()).unwrap_err().contains("JSON values"));
        let text = format!("[\"{}\", \"a\\\"[\"]", ",".repeat(JSON_MAX_TOKENS));
        assert_eq!(json(text.as_bytes()).unwrap()[1], "a\"[");
    }
}
