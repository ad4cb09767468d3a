//! The open loop: frames go out at their intended times (see schedule.rs) whatever the replies do,
//! with at most `--pipeline` frames in flight per connection; a frame that comes due while the
//! window is full waits in the client and is written as soon as a reply frees a slot, its latency
//! still counted from its intended time. So a slow server shows as many slow frames, as it would to
//! real clients arriving at that rate (no coordinated omission).
//!
//! A few threads (`--threads`, by default one per CPU) each drive many connections: one thread per
//! connection would wake once per frame per connection, and on a small machine those context
//! switches, not the server, would set the latency the run reports. A thread sends what is due on
//! each of its connections, then waits for whichever comes first, a reply on any of them or the
//! next intended time, with `ppoll` (nanosecond timeout; socket timeouts have jiffy resolution,
//! far too coarse for frames due every few microseconds). A busy thread finds several frames due
//! when it comes back, so the client's cost per frame falls as the load rises.

use std::os::fd::AsRawFd;

use crate::connection::{Conn, Wire};
use crate::error::BenchError;
use crate::limits::REPLY_TIMEOUT_MS;
use crate::schedule::Pacer;

const REPLY_TIMEOUT_NS: u64 = REPLY_TIMEOUT_MS * 1_000_000;

/// One connection of an open-loop thread.
struct Paced<'c, W: Wire> {
    conn: &'c mut Conn<W>,
    pacer: Pacer,
    sending: bool,
}

/// Runs the open loop on `conns`, each on its own schedule, until every budget is spent and every
/// frame is answered.
pub fn run_open<W: Wire>(conns: &mut [Conn<W>], pacers: Vec<Pacer>) -> Result<(), BenchError> {
    assert_eq!(conns.len(), pacers.len());
    let start_ns = conns.first().map_or(0, |c| c.clock.now_ns());
    let mut paced: Vec<Paced<'_, W>> = conns
        .iter_mut()
        .zip(pacers)
        .map(|(conn, pacer)| {
            conn.last_reply_ns = start_ns;
            Paced {
                conn,
                pacer,
                sending: true,
            }
        })
        .collect();
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(paced.len());
    let mut polled: Vec<usize> = Vec::with_capacity(paced.len());
    loop {
        let now_ns = paced.first().map_or(0, |p| p.conn.clock.now_ns());
        let mut wait_ns = REPLY_TIMEOUT_NS;
        let mut busy = false;
        fds.clear();
        polled.clear();
        for (i, p) in paced.iter_mut().enumerate() {
            if p.sending && p.conn.aborted() {
                p.sending = false;
            }
            if p.sending {
                let depth = p.conn.depth;
                while let Some(intended_ns) = p.pacer.take_due(now_ns, p.conn.in_flight(), depth) {
                    if !p.conn.push_frame(intended_ns) {
                        p.sending = false;
                        break;
                    }
                }
                p.conn.flush()?;
            }
            let in_flight = p.conn.in_flight();
            if in_flight > 0 {
                if now_ns.saturating_sub(p.conn.last_reply_ns) > REPLY_TIMEOUT_NS {
                    return Err(BenchError::Timeout(REPLY_TIMEOUT_MS));
                }
                fds.push(libc::pollfd {
                    fd: p.conn.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                polled.push(i);
            }
            // After the sends above, either the window is full or the next frame is not due yet.
            if p.sending && in_flight < p.conn.depth {
                wait_ns = wait_ns.min(p.pacer.due_ns().saturating_sub(now_ns).max(1));
            }
            busy |= p.sending || in_flight > 0;
        }
        if !busy {
            return Ok(());
        }
        if poll(&mut fds, wait_ns)? == 0 {
            continue;
        }
        for (fd, &i) in fds.iter().zip(&polled) {
            if fd.revents != 0 {
                paced[i].conn.read_replies()?;
            }
        }
    }
}

/// Waits up to `timeout_ns` for any of `fds` to become readable (or closed); returns how many are.
fn poll(fds: &mut [libc::pollfd], timeout_ns: u64) -> Result<usize, BenchError> {
    let timeout = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed slice of `fds.len()` pollfds and `timeout`
        // lives through the call; a null signal mask leaves the thread's mask unchanged.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &timeout, std::ptr::null()) };
        if ready >= 0 {
            return Ok(ready as usize);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::io("waiting for replies", error));
        }
    }
}
