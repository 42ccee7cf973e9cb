//! Integration tests against a real registry on 127.0.0.1 (one test binary keeps link time
//! down). Everything pushed is built here: no test downloads from the internet.

mod archive;
mod mirror;
mod pull;
mod token;

use kedge_registry::testing::{TestAuth, TestRegistry, TestRegistryOptions};

/// Starts a TLS + htpasswd registry, or fails saying what is missing: CI installs the tools,
/// so a silent skip would hide a broken setup.
pub fn registry() -> TestRegistry {
    let _ = rustls::crypto::ring::default_provider().install_default();
    TestRegistry::start(TestRegistryOptions { auth: true })
        .unwrap_or_else(|e| panic!("cannot start the test registry: {e}"))
}

/// Like [`registry`], with Docker's bearer-token flow: a token server on 127.0.0.1 checks the
/// credential and the registry checks the token.
pub fn token_registry() -> TestRegistry {
    let _ = rustls::crypto::ring::default_provider().install_default();
    TestRegistry::start_with(TestAuth::Token)
        .unwrap_or_else(|e| panic!("cannot start the token-auth test registry: {e}"))
}
