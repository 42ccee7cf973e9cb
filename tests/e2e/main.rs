//! kedge's integration tests: end-to-end scenarios with real processes and the real kubectl
//! (`skeleton`), and in-process tests of the plugin sandbox (`sandbox`).

mod apply;
mod create;
mod harness;
mod images;
mod kinds;
mod python;
mod sandbox;
mod skeleton;
