//! The Kubernetes platform: what a ZmqService becomes in a cluster.

pub mod render;
