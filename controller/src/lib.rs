//! The controller side of zdeploy: the sans-IO rollout engine, canary analysis, and the
//! platforms a revision runs on.

pub mod analysis;
pub mod engine;
pub mod experiment;
pub mod platforms;
pub mod runbooks;
pub mod tls;
