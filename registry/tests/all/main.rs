//! Integration tests against a real registry on 127.0.0.1 (one test binary keeps link time
//! down). Everything pushed is built here: no test downloads from the internet.

mod pull;

use kedge_registry::testing::{TestRegistry, TestRegistryOptions};

/// Starts a TLS + htpasswd registry, or fails saying what is missing: CI installs the tools,
/// so a silent skip would hide a broken setup.
pub fn registry() -> TestRegistry {
    let _ = rustls::crypto::ring::default_provider().install_default();
    TestRegistry::start(TestRegistryOptions { auth: true })
        .unwrap_or_else(|e| panic!("cannot start the test registry: {e}"))
}
