//! Where a revision runs: `kubernetes` (what a ZmqService becomes in a cluster) and
//! `local` (child processes on this machine behind an embedded zgate).

pub mod kubernetes;
pub mod local;
