//! What the node needs from the operating system before executors start: the CPUs it may use,
//! enough locked memory for io_uring, blocked signals for a clean shutdown, a data-dir lock.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::limits::{EXECUTOR_LOCKED_BYTES, IO_MEMORY_BYTES_DEFAULT, IO_MEMORY_BYTES_MIN};

/// The CPUs this process may run on (sched_getaffinity), in ascending order. Executors are pinned
/// to these, never to CPUs the process is not allowed on (containers, taskset).
pub fn usable_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and sched_getaffinity writes at
    // most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) })
        .collect();
    assert!(!cpus.is_empty(), "sched_getaffinity returned an empty set");
    Ok(cpus)
}

/// How much io_memory each executor gets, after making room in RLIMIT_MEMLOCK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockPlan {
    pub io_memory_bytes: usize,
    pub limit_bytes: u64,
    pub raised: bool,
}

/// Raises RLIMIT_MEMLOCK to fit `shards` executors with the default io_memory pool when allowed;
/// otherwise shrinks the pool to fit the limit; otherwise fails with the command to run.
pub fn plan_memlock(shards: u16) -> Result<MemlockPlan, String> {
    let want = u64::from(shards) * (EXECUTOR_LOCKED_BYTES + IO_MEMORY_BYTES_DEFAULT as u64);
    let (soft, hard) = get_memlock().map_err(|e| format!("getrlimit(RLIMIT_MEMLOCK): {e}"))?;
    if soft == libc::RLIM_INFINITY || soft >= want {
        return Ok(MemlockPlan {
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            limit_bytes: soft,
            raised: false,
        });
    }
    // Try the full amount (needs CAP_SYS_RESOURCE if above the hard limit), then the hard limit.
    if set_memlock(want, want.max(hard)).is_ok()
        || (hard != libc::RLIM_INFINITY && hard >= want && set_memlock(want, hard).is_ok())
    {
        return Ok(MemlockPlan {
            io_memory_bytes: IO_MEMORY_BYTES_DEFAULT,
            limit_bytes: want,
            raised: true,
        });
    }
    let limit = if hard > soft && set_memlock(hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let per_executor = limit / u64::from(shards);
    let io_memory = per_executor.saturating_sub(EXECUTOR_LOCKED_BYTES) as usize;
    if io_memory >= IO_MEMORY_BYTES_MIN {
        return Ok(MemlockPlan {
            io_memory_bytes: io_memory & !4095,
            limit_bytes: limit,
            raised: limit != soft,
        });
    }
    let need_kib = u64::from(shards) * (EXECUTOR_LOCKED_BYTES + IO_MEMORY_BYTES_MIN as u64) / 1024;
    Err(format!(
        "locked-memory limit is {} KiB but {shards} shards need at least {need_kib} KiB for io_uring, and it \
         cannot be raised from here. Run `ulimit -l {}` before tallyd (or set LimitMEMLOCK= for the service / \
         `memlock` in /etc/security/limits.conf), or run with fewer --shards.",
        limit / 1024,
        want / 1024
    ))
}

fn get_memlock() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

fn set_memlock(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks SIGINT and SIGTERM in the calling thread (and so in every thread it spawns afterwards),
/// so that only `wait_for_signal` sees them.
pub fn block_shutdown_signals() {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        assert_eq!(rc, 0, "pthread_sigmask");
    }
}

/// Waits for SIGINT or SIGTERM (blocked beforehand by `block_shutdown_signals`); returns its number.
pub fn wait_for_signal() -> i32 {
    // SAFETY: sigwait on a local set of blocked signals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut signal = 0;
        let rc = libc::sigwait(&set, &mut signal);
        assert_eq!(rc, 0, "sigwait");
        signal
    }
}

/// An exclusive lock on `data_dir/LOCK`, held for the life of the process, so two nodes never
/// share a data directory.
pub struct DataDirLock {
    _file: File,
}

pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, String> {
    std::fs::create_dir_all(data_dir).map_err(|e| format!("create data dir {}: {e}", data_dir.display()))?;
    let path = data_dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: flock on an open descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "data dir {} is locked by another tallyd ({})",
            data_dir.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_cpus_are_within_the_machine() {
        let cpus = usable_cpus().unwrap();
        let online = std::thread::available_parallelism().unwrap().get();
        assert!(!cpus.is_empty());
        assert!(cpus.len() <= online.max(cpus.len()));
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn memlock_plan_fits_the_limit() {
        let plan = plan_memlock(2).unwrap();
        assert!(plan.io_memory_bytes >= IO_MEMORY_BYTES_MIN);
        let (soft, _) = get_memlock().unwrap();
        assert!(soft == libc::RLIM_INFINITY || soft >= 2 * (EXECUTOR_LOCKED_BYTES + plan.io_memory_bytes as u64));
    }

    #[test]
    fn data_dir_lock_is_exclusive() {
        let dir = std::env::temp_dir().join(format!("tally-lock-test-{}", std::process::id()));
        let first = lock_data_dir(&dir).unwrap();
        let second = lock_data_dir(&dir);
        assert!(second.is_err());
        drop(first);
        assert!(lock_data_dir(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
