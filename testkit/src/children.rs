//! Child processes that cannot outlive the test: killed on drop, and killed by the kernel
//! when the thread that started them ends (a test that panics or times out included).

use std::process::{Child, Command};

/// Makes the process `cmd` starts die with the thread that starts it (PR_SET_PDEATHSIG):
/// each test runs on its own thread, so nothing it started survives it.
pub fn die_with_test(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Daemon {
    /// Starts `cmd`, tied to this thread's life.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = die_with_test(cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Self(child)
    }

    /// Kills it at once (SIGKILL), as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
