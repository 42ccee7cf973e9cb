//! kedge's integration tests: end-to-end scenarios with real processes and the real kubectl
//! (`skeleton`), and in-process tests of the plugin sandbox (`sandbox`).

mod apply;
mod authz;
mod autonomy;
mod create;
mod daemonset;
mod exec;
mod explain;
mod harness;
mod images;
mod jobs;
mod kinds;
mod kubectl;
mod nat;
mod node_identity;
mod nodes;
mod plugins;
mod probes;
mod python;
mod rbac;
mod sandbox;
mod services;
mod skeleton;
mod statefulset;
mod volumes;
