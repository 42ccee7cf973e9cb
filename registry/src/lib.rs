//! Container images for kedge nodes: parsing image references the way Kubernetes does, and the
//! node-local store of images already present (imported for air-gapped nodes, or pulled).
//!
//! Pulling from a registry is not here yet; `LocalImageStore` is where pulled images will land.

pub mod reference;
pub mod store;

pub use reference::{PullPolicy, RefError, Reference, UnknownPullPolicy, default_pull_policy};
pub use store::{LocalImageStore, StoreError};
