//! Waiting for SIGINT or SIGTERM, the signals a terminal or the kubelet sends.

use tokio::signal::unix::{SignalKind, signal};

/// Returns when the process is asked to stop.
pub async fn wait_for_stop() {
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
