//! Giving freed memory back to the OS. libzmq allocates buffers and pipes for every
//! connection and frees them when a client leaves, but glibc's allocator keeps freed
//! memory in its arenas: 2,000 clients coming and going took zgate from 30 to 133 MiB,
//! never returned. Every few seconds, when the allocator holds more unused than in use
//! (and more than 16 MiB), zgate asks it to return it (`malloc_trim`). A busy gateway,
//! whose freed memory is soon used again, is left alone: trimming takes the allocator's
//! locks, which libzmq's I/O threads wait on. Other allocators and systems give memory
//! back by themselves or not at all: there it does nothing. The release controller does
//! the same: a fleet's first reconciles leave most of its peak free in the arenas.

use std::time::Duration;

/// How often the allocator is looked at.
const EVERY: Duration = Duration::from_secs(2);

/// Free memory held by the allocator above which it may be asked to give it back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HELD_ENOUGH: usize = 16 << 20;

/// Returns the allocator's unused memory to the OS every few seconds, until aborted.
pub fn give_back_periodically() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            give_back();
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn give_back() {
    // SAFETY: mallinfo2 and malloc_trim take no pointers and only walk the allocator's
    // own arenas under their locks.
    unsafe {
        let info = libc::mallinfo2();
        if info.fordblks > HELD_ENOUGH && info.fordblks > info.uordblks {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn give_back() {}
