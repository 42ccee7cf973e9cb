//! What the kedge host and its Wasm plugins both need, written once: pure functions with no
//! I/O, built for the host and for `wasm32-wasip2` guests alike. Two implementations of one
//! format disagree sooner or later (the host's floating-point quantities made `9m` of CPU
//! 10 millicores on a node whose scheduler counted 9); one cannot.

pub mod quantity;
