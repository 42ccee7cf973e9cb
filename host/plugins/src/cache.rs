//! On-disk cache of compiled plugins: compiling an 800 KB controller takes ~2 s, loading its
//! precompiled form a few milliseconds (shared/STACK.md), which matters at every server start.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

/// Loads `digest` from `dir` if a compatible artifact is there, else compiles, stores and
/// returns it. The file name carries the engine's compatibility hash, so an artifact from
/// another wasmtime version or configuration is never loaded.
pub(crate) fn load_or_compile(
    engine: &Engine,
    dir: &Path,
    digest: &str,
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let file = dir.join(format!(
        "{}-{:016x}.cwasm",
        digest.trim_start_matches("sha256:"),
        h.finish()
    ));
    if file.exists() {
        // SAFETY: `deserialize_file` requires a file produced by `Engine::precompile_*` of a
        // compatible engine that nobody tampered with. We only read files this function
        // wrote, named by the content hash of their source and the engine's compatibility
        // hash, from a directory owned by the kedge server (created 0700 below); wasmtime
        // also checks the header and version itself.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(engine, &file) };
        match loaded {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring unusable cached plugin")
            }
        }
    }
    let compiled = engine.precompile_component(bytes)?;
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
    std::fs::write(&tmp, &compiled)?;
    std::fs::rename(&tmp, &file)?;
    #[allow(unsafe_code)]
    // SAFETY: as above; these are the bytes we just produced with this engine.
    let c = unsafe { Component::deserialize(engine, &compiled) }?;
    Ok(c)
}
