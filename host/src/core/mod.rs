//! Pure logic with no I/O: the resource table, selectors, patches, object metadata.

pub mod apply;
pub mod channel;
pub mod cron;
pub mod meta;
pub mod patch;
pub mod pod;
pub mod quantity;
pub mod resources;
pub mod selector;
pub mod spdy;
