//! A pod's `runtimeClassName`, as kubelet resolves it: the RuntimeClass's `handler` names the
//! runtime that runs every container of the pod. This node's handlers are `wasm` (wasmtime)
//! and `runc` (OCI containers, when runc is usable here). A pod without a class runs each
//! image in the runtime the image is made for (its media type, known after the pull); a pod
//! with one runs only images of its handler's kind, and any other fails to start with
//! kubelet's `CreateContainerError` and a message saying why, as does a class that does not
//! exist or whose handler this node does not have.
//!
//! The handler of each class a pod used is kept in `<data-dir>/runtime-classes/<name>`, so
//! that pods restarted while the server is unreachable keep their runtime.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::client::Client;

/// A runtime handler this node knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handler {
    Wasm,
    Runc,
}

impl Handler {
    fn parse(handler: &str) -> Option<Self> {
        match handler {
            "wasm" => Some(Handler::Wasm),
            "runc" => Some(Handler::Runc),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Handler::Wasm => "wasm",
            Handler::Runc => "runc",
        }
    }
}

/// The pod's class and its handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Class {
    pub name: String,
    pub handler: Handler,
}

/// The class the pod names, if any.
pub(crate) fn class_name(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/runtimeClassName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

/// The handler a RuntimeClass object names, checked against this node's.
fn handler_of(class: &str, obj: &Value) -> Result<Handler, String> {
    let handler = obj.get("handler").and_then(Value::as_str).unwrap_or("");
    Handler::parse(handler).ok_or_else(|| unknown_handler(class, handler))
}

/// containerd's words for a handler it does not have, and what this node has.
fn unknown_handler(class: &str, handler: &str) -> String {
    format!(
        "failed to get sandbox runtime: no runtime for {handler:?} is configured (RuntimeClass \
         {class:?}; this node's runtime handlers are \"wasm\" and \"runc\")"
    )
}

/// Whether a container's image may run under the class: `Err` says why not.
pub(crate) fn check_image(class: &Class, image: &str, is_wasm: bool) -> Result<(), String> {
    match (class.handler, is_wasm) {
        (Handler::Wasm, true) | (Handler::Runc, false) => Ok(()),
        (Handler::Wasm, false) => Err(format!(
            "image {image:?} is an OCI container image, not a Wasm component or module, and \
             the pod's RuntimeClass {:?} has handler \"wasm\", which runs only Wasm",
            class.name
        )),
        (Handler::Runc, true) => Err(format!(
            "image {image:?} is a Wasm component or module, not an OCI container image, and \
             the pod's RuntimeClass {:?} has handler \"runc\", which runs only OCI containers",
            class.name
        )),
    }
}

/// Where the handler of `class` is kept; `None` for a name that must not become a path.
fn record_path(data_dir: &Path, class: &str) -> Option<PathBuf> {
    let safe = !class.is_empty()
        && !class.starts_with('.')
        && class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    safe.then(|| data_dir.join("runtime-classes").join(class))
}

fn remember(data_dir: &Path, class: &str, handler: Handler) {
    use std::os::unix::fs::DirBuilderExt as _;
    let Some(path) = record_path(data_dir, class) else {
        return;
    };
    if std::fs::read(&path).is_ok_and(|b| b == handler.name().as_bytes()) {
        return;
    }
    let written = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path.parent().expect("a file in a directory"))
        .map_err(|e| e.to_string())
        .and_then(|()| {
            kedge_tunnel::write_atomic(&path, handler.name().as_bytes(), 0o600)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(class, error = %e, "could not record the RuntimeClass's handler");
    }
}

fn recalled(data_dir: &Path, class: &str) -> Option<Handler> {
    let bytes = std::fs::read(record_path(data_dir, class)?).ok()?;
    Handler::parse(std::str::from_utf8(&bytes).ok()?)
}

/// The pod's class and handler (`None`: the pod names none), from the API, or from this
/// node's record while the server is unreachable.
pub(crate) async fn resolve(
    client: &Client,
    data_dir: &Path,
    pod: &Value,
) -> Result<Option<Class>, String> {
    let Some(name) = class_name(pod) else {
        return Ok(None);
    };
    let path = format!("/apis/node.k8s.io/v1/runtimeclasses/{name}");
    let handler = match client.get(&path).await {
        Ok(obj) => {
            let handler = handler_of(name, &obj)?;
            remember(data_dir, name, handler);
            handler
        }
        Err(e) if e.code() == Some(404) => {
            return Err(format!(
                "failed to get sandbox runtime handler: runtimeclass.node.k8s.io {name:?} not found"
            ));
        }
        Err(e) if e.is_unreachable() => recalled(data_dir, name).ok_or_else(|| {
            format!("looking up RuntimeClass {name:?}: {e}, and the node has no record of it")
        })?,
        Err(e) => return Err(format!("looking up RuntimeClass {name:?}: {e}")),
    };
    Ok(Some(Class {
        name: name.to_string(),
        handler,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, handler: Handler) -> Class {
        Class {
            name: name.into(),
            handler,
        }
    }

    #[test]
    fn a_class_runs_only_images_of_its_handler() {
        let wasm = class("wasm", Handler::Wasm);
        let runc = class("runc", Handler::Runc);
        assert_eq!(check_image(&wasm, "hello-wasm:v1", true), Ok(()));
        assert_eq!(check_image(&runc, "busybox", false), Ok(()));
        let e = check_image(&wasm, "busybox", false).unwrap_err();
        assert!(
            e.contains("not a Wasm component or module") && e.contains("handler \"wasm\""),
            "{e}"
        );
        let e = check_image(&runc, "hello-wasm:v1", true).unwrap_err();
        assert!(
            e.contains("is a Wasm component or module") && e.contains("handler \"runc\""),
            "{e}"
        );
    }

    #[test]
    fn handlers_this_node_lacks_are_named() {
        let obj = |h: &str| json!({"metadata": {"name": "x"}, "handler": h});
        assert_eq!(handler_of("x", &obj("wasm")), Ok(Handler::Wasm));
        assert_eq!(handler_of("x", &obj("runc")), Ok(Handler::Runc));
        let e = handler_of("secure", &obj("kata")).unwrap_err();
        assert!(
            e.contains("no runtime for \"kata\" is configured")
                && e.contains("RuntimeClass \"secure\""),
            "{e}"
        );
    }

    #[test]
    fn names_and_records() {
        let pod = |spec: Value| json!({"spec": spec});
        assert_eq!(class_name(&pod(json!({}))), None);
        assert_eq!(class_name(&pod(json!({"runtimeClassName": ""}))), None);
        assert_eq!(
            class_name(&pod(json!({"runtimeClassName": "wasm"}))),
            Some("wasm")
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recalled(dir.path(), "fast"), None);
        remember(dir.path(), "fast", Handler::Runc);
        assert_eq!(recalled(dir.path(), "fast"), Some(Handler::Runc));
        remember(dir.path(), "fast", Handler::Wasm);
        assert_eq!(recalled(dir.path(), "fast"), Some(Handler::Wasm));
        remember(dir.path(), "../escape", Handler::Wasm);
        assert_eq!(recalled(dir.path(), "../escape"), None);
    }
}
