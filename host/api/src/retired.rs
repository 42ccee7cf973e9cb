//! Requests in a retired version (see [`kedge_core::resources::RETIRED`]): bodies converted
//! to the stored version on the way in and back on the way out, and the deprecation warning
//! on every response. `None` is a request in the stored version, passed through untouched.

use axum::body::Bytes;
use axum::http::HeaderValue;
use serde_json::Value;

use crate::error::{ApiError, Result};
use kedge_core::resources::{ConvertError, Retired};

/// A `Warning` header value: code 299, no agent, the quoted text (RFC 7234, as
/// kube-apiserver sends it and kubectl prints it). Every warning the API sends uses it.
pub(crate) fn warning_header(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("299 - \"{}\"", text.replace('"', "\\\""))).ok()
}

/// A request body (object or apply configuration) in the stored version's form.
pub(crate) fn inbound(view: Option<&Retired>, mut obj: Value) -> Result<Value> {
    let Some(r) = view else { return Ok(obj) };
    r.to_stored(&mut obj).map_err(|e| match e {
        ConvertError::ApiVersion { .. } => ApiError::bad_request(e.to_string()),
        ConvertError::Unrepresentable(why) => ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            r.resource.kind, r.resource.version, r.resource.kind
        )),
    })?;
    Ok(obj)
}

/// A stored object (or anything else a handler answers, such as a Status) as the request's
/// version presents it. An object the retired version cannot represent is refused with 406,
/// naming the version that can.
pub(crate) fn outbound(view: Option<&Retired>, mut obj: Value) -> Result<Value> {
    let Some(r) = view else { return Ok(obj) };
    if obj.get("kind").and_then(Value::as_str) != Some(r.resource.kind) {
        return Ok(obj);
    }
    r.from_stored(&mut obj).map_err(|e| {
        ApiError::new(
            406,
            "NotAcceptable",
            format!(
                "{} {:?} cannot be represented in {}: {e}; use {}",
                r.resource.plural,
                kedge_core::meta::name(&obj),
                r.api_version(),
                r.stored().api_version()
            ),
        )
    })?;
    Ok(obj)
}

/// [`outbound`] of an object held as stored JSON (lists and watch events).
pub(crate) fn outbound_bytes(view: Option<&Retired>, stored: Bytes) -> Result<Bytes> {
    if view.is_none() {
        return Ok(stored);
    }
    let obj: Value = serde_json::from_slice(&stored)
        .map_err(|e| ApiError::internal(format!("stored object unreadable: {e}")))?;
    let out = outbound(view, obj)?;
    Ok(Bytes::from(
        serde_json::to_vec(&out).expect("a JSON value serializes"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cronjob_v1beta1() -> &'static Retired {
        kedge_core::resources::retired("batch", "v1beta1", "cronjobs").unwrap()
    }

    #[test]
    fn warning_header_is_kube_apiservers() {
        let h = warning_header(&cronjob_v1beta1().warning().unwrap()).unwrap();
        assert_eq!(
            h.to_str().unwrap(),
            "299 - \"batch/v1beta1 CronJob is deprecated in v1.21+, unavailable in v1.25+; use batch/v1 CronJob\""
        );
    }

    #[test]
    fn bodies_cross_both_ways_and_statuses_pass() {
        let r = Some(cronjob_v1beta1());
        let stored = inbound(
            r,
            json!({"apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "a"}}),
        )
        .unwrap();
        assert_eq!(stored["apiVersion"], "batch/v1");
        let back = outbound(r, stored.clone()).unwrap();
        assert_eq!(back["apiVersion"], "batch/v1beta1");
        let bytes = outbound_bytes(r, Bytes::from(serde_json::to_vec(&stored).unwrap())).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), back);
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        assert_eq!(outbound(r, status.clone()).unwrap(), status);
        let e = inbound(r, json!({"apiVersion": "batch/v1", "kind": "CronJob"})).unwrap_err();
        assert_eq!(e.code, 400);
        // The stored version passes through as it is.
        assert_eq!(outbound(None, stored.clone()).unwrap(), stored);
    }
}
