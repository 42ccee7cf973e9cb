//! kedge's chaos campaigns (issue 19): programs that attack one property each for a bounded
//! time and print what they measured, asserting the property held.
//!
//! - `crash`: the server killed with SIGKILL at random moments under a writer pool; every
//!   acknowledged write must be back after the restart, exactly, and no unacknowledged one
//!   may appear torn. `agent`: the same for the node agent, mid-pull and mid-write.
//! - `linearizability`: 32 clients doing read-modify-write on a few keys across server
//!   restarts; the recorded history goes through a linearizability checker ([`linearize`]).
//! - `watch`: watchers resuming from random resourceVersions across restarts and
//!   compaction; each must see exactly the store's history, in order, or 410 Gone.
//! - `tunnel`: loss, delay, reordering, a cut and NAT rebinding between an agent and the
//!   server; pods keep running, the node comes back, `kubectl logs -f` goes on.
//! - `plugins`: hostile plugins under write and watch load.
//! - `soak`: a fleet of simulated agents held by one server, whose resources must stay flat.
//!
//! `cargo test -p kedge --test chaos` runs the short forms (what CI runs: a fixed seed, a
//! few minutes in all), one campaign at a time. `make chaos` runs the long forms and `make
//! chaos-soak` the hour-long soak; each campaign's knobs (environment variables) are at the
//! top of its file, and `KEDGE_CHAOS_SEED` replays a run.

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
