//! API errors and their `Status` wire form, worded as kube-apiserver words them so kubectl
//! renders them the same way (`Error from server (NotFound): pods "x" not found`).

use serde_json::{Value, json};

use kedge_core::resources::Resource;
use kedge_store as store;

/// One field problem in a 422 Invalid.
#[derive(Clone, Debug)]
pub struct Cause {
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    /// `Required value: <why>`, as kube-apiserver words a missing field it explains.
    pub fn required_with(field: impl Into<String>, why: &str) -> Self {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value: {why}"),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &str, why: impl std::fmt::Display) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {why}"),
        }
    }

    pub fn unsupported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                allowed.join(", ")
            ),
        }
    }

    pub fn forbidden(field: impl Into<String>, why: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", why.into()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(res: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
            ..Self::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", qualified(res)),
            )
        }
    }

    pub(crate) fn path_not_found(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub(crate) fn already_exists(res: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
            ..Self::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(res)),
            )
        }
    }

    pub fn conflict(res: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "group": res.group, "kind": res.plural})),
            ..Self::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again",
                    qualified(res)
                ),
            )
        }
    }

    pub fn invalid(res: &Resource, name: &str, causes: Vec<Cause>) -> Self {
        Self::invalid_kind(res.kind, res.kind, res.group, name, causes)
    }

    /// 422 on request options (`ListOptions`, `DeleteOptions`) of meta.k8s.io, worded as
    /// kube-apiserver's `ListOptions.meta.k8s.io "" is invalid: ...`.
    pub(crate) fn invalid_options(kind: &'static str, causes: Vec<Cause>) -> Self {
        Self::invalid_kind(
            &format!("{kind}.meta.k8s.io"),
            kind,
            "meta.k8s.io",
            "",
            causes,
        )
    }

    fn invalid_kind(label: &str, kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let message = if summary.len() == 1 {
            format!("{label} \"{name}\" is invalid: {}", summary[0])
        } else {
            format!("{label} \"{name}\" is invalid: [{}]", summary.join(", "))
        };
        let causes: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        ApiError {
            details: Some(json!({"name": name, "group": group, "kind": kind, "causes": causes})),
            ..Self::new(422, "Invalid", message)
        }
    }

    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub(crate) fn unsupported_media(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// Maps a store error for the object `name` of `res`.
    pub(crate) fn from_store(e: store::Error, res: &Resource, name: &str) -> Self {
        match e {
            store::Error::NotFound => Self::not_found(res, name),
            store::Error::AlreadyExists => Self::already_exists(res, name),
            store::Error::Conflict { .. } => Self::conflict(res, name),
            store::Error::Expired { .. } => Self::expired(e.to_string()),
            store::Error::TooLarge { .. } => Self::new(413, "RequestEntityTooLarge", e.to_string()),
            store::Error::Backend(_) | store::Error::Corrupt { .. } => {
                Self::internal(e.to_string())
            }
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

/// `deployments.apps` for named groups, `pods` for the core group.
pub fn qualified(res: &Resource) -> String {
    if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    }
}
