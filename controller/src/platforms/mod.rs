//! Where a revision runs. `local`: child processes on this machine behind an embedded zgate.

pub mod local;
