//! How the plugin host runs plugins: limits, deadlines, pools.

use std::path::PathBuf;
use std::time::Duration;

/// Limits and locations for the plugin host.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// Wall-clock budget of one reconcile call (host calls included). A controller that
    /// needs more is looping or doing too much in one step.
    pub call_deadline: Duration,
    /// Linear memory cap per instance.
    pub memory_limit: usize,
    /// Where compiled plugins are cached (keyed by content hash and engine version).
    pub cache_dir: Option<PathBuf>,
    /// Whether a component not in the cache first runs code from the baseline compiler
    /// (Winch, quick to compile) until Cranelift's optimised build is ready; off, every new
    /// version waits for Cranelift.
    pub baseline_compiler: bool,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            call_deadline: Duration::from_secs(2),
            memory_limit: 64 << 20,
            cache_dir: None,
            baseline_compiler: true,
        }
    }
}

/// Sandbox limits of one plugin's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub call_deadline: Duration,
    pub memory: usize,
}

impl PluginConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            call_deadline: self.call_deadline,
            memory: self.memory_limit,
        }
    }
}
