//! What zdeploy's tests share, and nothing else uses: free loopback ports, directories
//! that remove themselves, child processes that die with the test, a mock Kubernetes API
//! server that checks each request, and typed fixtures of the example service.

pub mod apiserver;
pub mod children;
pub mod dirs;
pub mod fixtures;
pub mod freeze;
pub mod ports;
