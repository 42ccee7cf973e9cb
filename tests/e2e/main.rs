//! kedge's integration tests: end-to-end scenarios with real processes and the real kubectl
//! (`skeleton`), and in-process tests of the plugin sandbox (`sandbox`).

mod apiproxy;
mod apply;
mod authz;
mod autonomy;
mod create;
mod daemonset;
mod drain;
mod exec;
mod explain;
mod harness;
mod hooks;
mod images;
mod incluster;
mod init;
mod jobs;
mod kinds;
mod kubectl;
mod nat;
mod network;
mod node_identity;
mod nodes;
mod plugins;
mod podspec;
mod probes;
mod python;
mod rbac;
mod retired;
mod rollout;
mod sandbox;
mod security;
mod services;
mod skeleton;
mod statefulset;
mod volumes;
mod volumes_pv;
