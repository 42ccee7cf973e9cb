//! On-disk cache of compiled plugins: compiling an 800 KB controller takes ~2 s, loading its
//! precompiled form a few milliseconds (shared/STACK.md), which matters at every server start.
//! Only the optimising compiler's artifacts are kept: the baseline compiler is fast enough
//! to run again, and its code is replaced as soon as the optimised build is ready.

use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Where `digest`'s artifact for `engine` lives in `dir`. The name carries the engine's
/// compatibility hash, so an artifact from another wasmtime version or configuration is
/// never loaded.
fn artifact(engine: &Engine, dir: &Path, digest: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!(
        "{}-{:016x}.cwasm",
        digest.trim_start_matches("sha256:"),
        h.finish()
    ))
}

/// `digest` from `dir`, if a compatible artifact is there.
pub(crate) fn load(engine: &Engine, dir: &Path, digest: &str) -> Option<Component> {
    let file = artifact(engine, dir, digest);
    if !file.exists() {
        return None;
    }
    // SAFETY: `deserialize_file` requires a file produced by `Engine::precompile_*` of a
    // compatible engine that nobody tampered with. We only read files `store`
    // wrote, named by the content hash of their source and the engine's compatibility hash,
    // from a directory owned by the kedge server (created 0700 there); wasmtime also checks
    // the header and version itself.
    #[allow(unsafe_code)]
    let loaded = unsafe { Component::deserialize_file(engine, &file) };
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cached plugin");
            None
        }
    }
}

/// Stores `compiled` (from `Engine::precompile_component` of an engine configured like
/// `engine`) as `digest`'s artifact in `dir`.
pub(crate) fn store(
    engine: &Engine,
    dir: &Path,
    digest: &str,
    compiled: &[u8],
) -> std::io::Result<()> {
    let file = artifact(engine, dir, digest);
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    // Unique per writer: several servers may share one cache directory.
    let tmp = file.with_extension(format!(
        "{}.{}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, &file)
}

/// Loads `compiled`, which this process just produced with `engine` or with an engine of
/// the same configuration (wasmtime checks that the settings match).
pub(crate) fn deserialize(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    #[allow(unsafe_code)]
    // SAFETY: `deserialize` requires bytes from `Engine::precompile_*` of a compatible engine
    // that nobody tampered with: our callers pass bytes this process produced a moment ago,
    // still in its memory.
    let c = unsafe { Component::deserialize(engine, compiled) }?;
    Ok(c)
}
