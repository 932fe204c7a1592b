//! The Kubernetes platform: what a ZmqService becomes in a cluster.

pub mod controller;
pub mod leader;
pub mod render;
