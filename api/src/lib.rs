//! zdeploy's custom resources: `ZmqService` and `ChaosSchedule`, their defaults, their
//! validation, and the CRDs generated from them. No I/O lives here.

pub mod chaos;
pub mod command;
pub mod compare;
pub mod crd;
pub mod duration;
pub mod image;
pub mod local_release;
pub mod pool;
pub mod revision;
pub mod route;
pub mod service;
pub mod shadow;
pub mod strict_json;
pub mod validate;
pub mod weight;
pub mod windows;

pub use chaos::{ChaosSchedule, ChaosScheduleSpec, Fault};
pub use duration::Duration;
pub use pool::Pool;
pub use service::{ZmqService, ZmqServiceSpec, ZmqServiceStatus};
pub use weight::Weight;
pub use windows::WindowsBuild;
