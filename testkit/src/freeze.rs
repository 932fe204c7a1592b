//! Freezing one thread of another process, the others running on: a stalled data plane
//! whose HTTP side still answers, which no real request can make on demand. ptrace's
//! SEIZE and INTERRUPT stop only the thread named (SIGSTOP would stop the whole process).

use std::time::Duration;

/// A thread held stopped; it runs again when this is dropped.
#[derive(Debug)]
pub struct Frozen {
    tid: i32,
}

/// Whether process `pid` has exited (a zombie, or gone), as /proc says.
pub fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The id of the thread of process `pid` whose name is `name`, if it has one.
pub fn thread_named(pid: u32, name: &str) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim() == name).then(|| t.file_name().to_str()?.parse().ok())?
    })
}

/// Stops thread `tid` until the result is dropped; must be dropped on the thread that
/// froze it (ptrace ties a tracee to one tracer thread).
pub fn freeze(tid: i32) -> std::io::Result<Frozen> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace and waitpid with a thread id and null data have no memory effects here.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut status = 0;
        if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(Frozen { tid })
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let null = std::ptr::null_mut::<libc::c_void>();
        // SAFETY: as above; detaching lets the thread run on. A thread whose process
        // exited meanwhile waits for its tracer to reap it (and holds up the process's own
        // exit status until then): reap it.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, self.tid, null, null);
            let mut status = 0;
            libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG);
        }
        // The thread may need a moment to be scheduled again.
        std::thread::sleep(Duration::from_millis(10));
    }
}
