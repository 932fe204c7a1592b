//! The requests to stop that zdeploy obeys: Ctrl-C everywhere; SIGTERM (a terminal, the
//! kubelet) on Unix; Ctrl-Break, a closed console and a shutdown on Windows.

use std::sync::atomic::{AtomicBool, Ordering};

/// Returns when the process is asked to stop.
#[cfg(unix)]
pub async fn wait_for_stop() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Returns when the process is asked to stop.
#[cfg(windows)]
pub async fn wait_for_stop() {
    use tokio::signal::windows::{ctrl_break, ctrl_close, ctrl_shutdown};
    let mut brk = ctrl_break().expect("installing a Ctrl-Break handler");
    let mut close = ctrl_close().expect("installing a console-close handler");
    let mut shutdown = ctrl_shutdown().expect("installing a shutdown handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = brk.recv() => {}
        _ = close.recv() => {}
        _ = shutdown.recv() => {}
    }
}

/// A request to stop, listened for from this call on: a signal that comes before anything
/// awaits it is kept, not lost. Clones resolve together.
pub type Stop = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// Starts listening for a request to stop.
#[cfg(unix)]
pub fn listen_for_stop() -> Stop {
    use futures::FutureExt;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    .boxed()
    .shared()
}

/// Starts listening for a request to stop.
#[cfg(windows)]
pub fn listen_for_stop() -> Stop {
    use futures::FutureExt;
    use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close, ctrl_shutdown};
    let mut c = ctrl_c().expect("installing a Ctrl-C handler");
    let mut brk = ctrl_break().expect("installing a Ctrl-Break handler");
    let mut close = ctrl_close().expect("installing a console-close handler");
    let mut shutdown = ctrl_shutdown().expect("installing a shutdown handler");
    async move {
        tokio::select! {
            _ = c.recv() => {}
            _ = brk.recv() => {}
            _ = close.recv() => {}
            _ = shutdown.recv() => {}
        }
    }
    .boxed()
    .shared()
}

/// Set once the process is asked to stop; for loops that poll instead of awaiting.
static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the handlers that set the stop flag; returns the flag.
pub fn stop_flag() -> &'static AtomicBool {
    #[cfg(unix)]
    {
        extern "C" fn on_signal(_: libc::c_int) {
            STOP.store(true, Ordering::Relaxed);
        }
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        }
    }
    #[cfg(windows)]
    {
        unsafe extern "system" fn on_event(_: u32) -> windows_sys::core::BOOL {
            STOP.store(true, Ordering::Relaxed);
            1
        }
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            windows_sys::Win32::System::Console::SetConsoleCtrlHandler(Some(on_event), 1);
        }
    }
    &STOP
}
