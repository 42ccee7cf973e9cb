//! kedge's integration tests: end-to-end scenarios with real processes and the real kubectl
//! (`skeleton`), and in-process tests of the plugin sandbox (`sandbox`).

mod apply;
mod create;
mod daemonset;
mod explain;
mod harness;
mod images;
mod jobs;
mod kinds;
mod kubectl;
mod nodes;
mod python;
mod sandbox;
mod services;
mod skeleton;
mod statefulset;
