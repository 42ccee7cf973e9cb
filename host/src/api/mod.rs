//! The Kubernetes API: object verbs ([`ops`]), their HTTP surface ([`http`]), discovery,
//! OpenAPI, Tables, per-kind defaulting and validation.

pub mod alloc;
pub mod authz;
pub mod body;
pub mod discovery;
pub mod error;
pub mod http;
pub mod kinds;
pub mod openapi;
pub mod ops;
pub mod protobuf;
pub mod rbac;
pub mod schema;
mod stream;
pub mod table;

pub use error::ApiError;
pub use ops::Api;
