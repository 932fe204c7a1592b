//! The Kubernetes platform: what a ZmqService becomes in a cluster (`render`), the
//! ZmqService reconciler (`service`) and the ChaosSchedule reconciler (`chaos`), what they
//! share (`errors`, `measure`, `events`, `stats`, `endpoints`), the manager that runs both
//! (`manager`), the Alertmanager bridge (`alerts`), and leader election between replicas.

pub mod alerts;
pub mod chaos;
pub mod conditions;
pub mod endpoints;
pub mod errors;
pub mod events;
pub mod handover;
pub mod lanes;
pub mod leader;
pub mod manager;
pub mod measure;
pub mod merge_patch;
pub mod queue;
pub mod render;
pub mod revisions;
pub mod service;
pub mod settled;
pub mod stats;
