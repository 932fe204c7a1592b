//! The Kubernetes platform: what a ZmqService becomes in a cluster, the controllers that
//! drive ZmqServices and ChaosSchedules, and leader election between their replicas.

pub mod chaos;
pub mod conditions;
pub mod controller;
pub mod endpoints;
pub mod leader;
pub mod merge_patch;
pub mod render;
