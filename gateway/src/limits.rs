//! The process's open-file limit. Every client and backend connection is a descriptor; at
//! a soft limit of 1,024 a burst of idle connections starves zgate (libzmq retries the
//! failing accept), so zgate raises its soft limit to the hard one at start. Windows has
//! no such limit on sockets.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force
/// (`u64::MAX` on Windows, which has none).
#[cfg(windows)]
pub fn raise_open_files() -> u64 {
    u64::MAX
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
#[cfg(unix)]
pub fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
