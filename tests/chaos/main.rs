//! kedge's chaos campaigns (issue 19): programs that attack one property each for a bounded
//! time and print what they measured, asserting the property held.
//!
//! - `crash`: the server killed with SIGKILL at random moments under a writer pool; every
//!   acknowledged write must be back after the restart, exactly, and no unacknowledged one
//!   may appear torn.
//! - `linearizability`: 32 clients doing read-modify-write on a few keys across server
//!   restarts; the recorded history goes through a linearizability checker ([`linearize`]).
//! - `watch`: watchers resuming from random resourceVersions across restarts and
//!   compaction; each must see exactly the store's history, in order, or 410 Gone.
//!
//! `cargo test -p kedge --test chaos` runs the short form (what CI runs: a few cycles each, a
//! fixed seed). `make chaos` runs the long form; the knobs are environment variables:
//! `KEDGE_CHAOS_CYCLES` (server kills), `KEDGE_CHAOS_OPS` (linearizability operations),
//! `KEDGE_CHAOS_ROUNDS` (watch rounds) and `KEDGE_CHAOS_SEED` (replays a run).

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod agent;
mod crash;
mod linearizability;
mod linearize;
mod plugins;
mod server;
mod soak;
mod tunnel;
mod watch;
