//! The only unsafe code in weir: the few libc calls that std does not offer, each a plain
//! syscall.
//!
//! - In a freshly forked worker, before exec: ask the kernel to SIGKILL it when weir dies
//!   (`PR_SET_PDEATHSIG`), so workers never outlive weir even if weir is SIGKILLed.
//! - Signalling a worker's whole process group on release.
//! - Asking glibc's allocator how much of the heap is in use, and to give free pages back to
//!   the kernel after a burst (`mallinfo2`, `malloc_trim`).
//! - Reading and raising the descriptor limit (`RLIMIT_NOFILE`) at start, so the connection
//!   caps are not cut short by a soft limit below the hard one.
#![allow(unsafe_code)]

use tokio::process::Command;

/// Make the child die with weir (Linux). The signal is tied to the thread that spawns the
/// child; weir spawns workers from its control thread, which lives as long as weir.
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls (prctl, getppid, _exit), as pre_exec requires.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // weir died between fork and prctl: the signal will never come, so go now.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Send `signal` to the process group `pgid` (the worker and anything it started).
pub fn signal_group(pgid: u32, signal: i32) -> std::io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    if pgid <= 1 {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// SIGTERM, for the polite first stop.
pub const SIGTERM: i32 = libc::SIGTERM;
/// SIGKILL, after the grace period.
pub const SIGKILL: i32 = libc::SIGKILL;

/// Bytes the allocator has handed out and not had back (glibc's `mallinfo2().uordblks`);
/// `None` where weir is not built against glibc.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments, only reads the allocator's own statistics
        // under its locks, and returns a plain struct by value.
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Let each arena keep up to `bytes` free at the top of its heap instead of handing them back
/// at once (glibc's `M_TRIM_THRESHOLD`, 128 KiB by default); returns whether it was set.
pub fn keep_heap_top(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes the allocator's own lock and only sets a tunable; any thread
        // may call it at any time.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

/// Give the heap's free pages back to the kernel (glibc's `malloc_trim(0)`, which walks every
/// arena); returns whether any memory was released.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes the allocator's locks itself and only releases pages that
        // hold no live allocation; any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The soft and hard limits on open file descriptors (`RLIMIT_NOFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// What the process may open now (`EMFILE` beyond it).
    pub soft: u64,
    /// How far an unprivileged process may raise `soft`.
    pub hard: u64,
}

/// The descriptor limit in force.
// rlim_t is u64 on Linux, not on every target.
#[allow(clippy::unnecessary_cast)]
pub fn nofile_limit() -> std::io::Result<NofileLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(NofileLimit {
        soft: limit.rlim_cur as u64,
        hard: limit.rlim_max as u64,
    })
}

/// Set the soft descriptor limit to `soft`, keeping the hard one (`soft` must not exceed it).
#[allow(clippy::unnecessary_cast)]
pub fn set_nofile_soft_limit(soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit(2) reads one rlimit from the struct we own and pass by pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Make the next close of socket `fd` a reset (SO_LINGER with a zero timeout): what the
/// kernel still holds to send is dropped instead of trickled to a client that was cut for
/// taking too little of it. `fd` must be an open socket of the caller's, kept open across
/// the call (the connection that owns it is still alive).
pub fn reset_on_close(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live local; a descriptor
    // that is not a socket makes it fail with ENOTSOCK, never undefined behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
