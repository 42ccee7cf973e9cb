//! The agent's own record of the pods it runs (`<data-dir>/pod-cache/<uid>.json`), so that it
//! runs them again after its own restart even while the server is unreachable.

use std::path::{Path, PathBuf};

use serde_json::Value;

use kedge_core::meta;

pub(crate) fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pod-cache")
}

pub(crate) fn path(data_dir: &Path, uid: &str) -> Option<PathBuf> {
    crate::pods::uid_file(&dir(data_dir), uid)
}

/// Writes the pod (temp file + rename: a crash leaves the old record or the new one).
pub fn remember(data_dir: &Path, pod: &Value) {
    let Some(p) = path(data_dir, meta::uid(pod)) else {
        return;
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir(data_dir))?;
        let tmp = p.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(pod)?)?;
        std::fs::rename(&tmp, &p)
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, "could not record the pod locally");
    }
}

pub fn forget(data_dir: &Path, uid: &str) {
    if let Some(p) = path(data_dir, uid) {
        let _ = std::fs::remove_file(p);
    }
}

/// The recorded pods; unreadable records are dropped.
pub fn load(data_dir: &Path) -> Vec<Value> {
    read(data_dir, true)
}

/// The recorded pods, touching nothing: safe while records are being written.
pub fn peek(data_dir: &Path) -> Vec<Value> {
    read(data_dir, false)
}

pub(crate) fn read(data_dir: &Path, clean: bool) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else {
        return Vec::new();
    };
    let mut pods = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            if clean {
                let _ = std::fs::remove_file(&p);
            }
            continue;
        }
        match std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            Some(pod) => pods.push(pod),
            None if clean => {
                tracing::warn!(file = %p.display(), "dropping an unreadable pod record");
                let _ = std::fs::remove_file(&p);
            }
            None => {}
        }
    }
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_round_trip_and_bad_ones_are_dropped() {
        let d = tempfile::tempdir().unwrap();
        let pod = json!({"metadata": {"uid": "0f6c-11", "name": "a", "namespace": "default"}});
        remember(d.path(), &pod);
        remember(d.path(), &json!({"metadata": {"uid": "../escape"}}));
        std::fs::write(dir(d.path()).join("junk.json"), b"{not json").unwrap();
        assert_eq!(load(d.path()), vec![pod]);
        assert_eq!(std::fs::read_dir(dir(d.path())).unwrap().count(), 1);
        forget(d.path(), "0f6c-11");
        assert!(load(d.path()).is_empty());
    }
}
