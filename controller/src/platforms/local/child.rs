//! How a pool's child process is tied to `zdeploy up` and asked to stop, per OS. Linux:
//! the kernel sends it SIGTERM when zdeploy dies (`PR_SET_PDEATHSIG`), and a stop is a
//! SIGTERM. Windows: every child joins one Job object that kills its processes when
//! zdeploy's last handle to it closes (zdeploy dies, however), and a stop is a
//! CTRL_BREAK to the child's own process group. Either way, after the grace period the
//! child is killed.

use tokio::process::{Child, Command};

/// Prepares `cmd` so that the child it starts cannot outlive zdeploy.
pub fn tie_to_parent(cmd: &mut Command) {
    #[cfg(unix)]
    // SAFETY: prctl is async-signal-safe and only sets this child's own attribute.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(windows)]
    {
        // Its own group: a CTRL_BREAK for it reaches it alone, not zdeploy's console.
        cmd.creation_flags(windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP);
    }
}

/// Completes the tie for a started child (on Windows: it joins zdeploy's Job object).
pub fn adopt(child: &Child) -> std::io::Result<()> {
    #[cfg(windows)]
    if let Some(handle) = child.raw_handle() {
        return job::assign(handle);
    }
    let _ = child;
    Ok(())
}

/// Asks a child to stop and finish what it holds (SIGTERM; on Windows CTRL_BREAK).
pub fn ask_to_stop(child: &Child) {
    let Some(pid) = child.id() else {
        return;
    };
    #[cfg(unix)]
    // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    #[cfg(windows)]
    // SAFETY: the child leads its own process group (CREATE_NEW_PROCESS_GROUP).
    unsafe {
        windows_sys::Win32::System::Console::GenerateConsoleCtrlEvent(
            windows_sys::Win32::System::Console::CTRL_BREAK_EVENT,
            pid,
        );
    }
}

#[cfg(windows)]
mod job {
    //! The Job object every child of this process joins, closed (killing them) only when
    //! this process ends.

    use std::sync::OnceLock;

    use windows_sys::Win32::Foundation::HANDLE;
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
        SetInformationJobObject,
    };

    /// The job's handle, as an integer so that it may be shared between threads.
    static JOB: OnceLock<Result<usize, i32>> = OnceLock::new();

    fn create() -> Result<usize, i32> {
        // SAFETY: plain Win32 calls on a handle created here and never closed (the
        // kernel closes it when the process ends, which is the point).
        unsafe {
            let job = CreateJobObjectW(std::ptr::null(), std::ptr::null());
            if job.is_null() {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = std::mem::zeroed();
            info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
            let ok = SetInformationJobObject(
                job,
                JobObjectExtendedLimitInformation,
                (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            );
            if ok == 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
            Ok(job as usize)
        }
    }

    /// Puts the process behind `handle` into the job.
    pub fn assign(handle: std::os::windows::io::RawHandle) -> std::io::Result<()> {
        let job = (*JOB.get_or_init(create)).map_err(std::io::Error::from_raw_os_error)?;
        // SAFETY: both handles are valid: the job lives as long as this process, the
        // child's handle as long as its `Child`.
        let ok = unsafe { AssignProcessToJobObject(job as HANDLE, handle as HANDLE) };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
