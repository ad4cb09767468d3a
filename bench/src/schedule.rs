//! When frames go out and what their latency counts from, as pure functions of time (nanoseconds
//! since the run's epoch), so the rules can be tested without sockets or clocks.
//!
//! Open loop: the total rate R is split evenly over C connections. With B ops per frame, connection
//! c's frame k is *intended* at `offset_c + k · C·B/R` seconds, the connections' offsets spread
//! evenly over one interval so the server sees a smooth arrival stream. A frame's latency counts
//! from its intended time, never from when it was actually written: if the server stalls, the
//! frames that came due during the stall (and wait in the client because the window of
//! `--pipeline` frames is full) each carry the stall in their latency. That is the correction for
//! coordinated omission: a stall of 100 ms at 1000 frames/s shows as ~100 slow frames, not one.
//!
//! Closed loop: a frame's latency counts from when it was written; the next frame is written when a
//! reply frees its slot in the window.

/// Nanoseconds from `from_ns` to `done_ns`, in whole microseconds (rounded to nearest).
pub fn latency_us(from_ns: u64, done_ns: u64) -> u64 {
    (done_ns.saturating_sub(from_ns) + 500) / 1000
}

/// One connection's open-loop schedule.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval_ns: f64,
    offset_ns: f64,
    /// Index of the next frame to send.
    next: u64,
}

impl Pacer {
    /// The schedule of `connection` (of `connections`) at `rate` ops/s in total, `batch` ops per
    /// frame.
    pub fn new(rate: f64, connections: usize, connection: usize, batch: usize) -> Pacer {
        assert!(rate.is_finite() && rate > 0.0);
        assert!(connection < connections);
        assert!(batch >= 1);
        let interval_ns = 1e9 * connections as f64 * batch as f64 / rate;
        Pacer {
            interval_ns,
            offset_ns: interval_ns * connection as f64 / connections as f64,
            next: 0,
        }
    }

    /// The intended send time of frame `k`.
    pub fn intended_ns(&self, k: u64) -> u64 {
        (self.offset_ns + k as f64 * self.interval_ns) as u64
    }

    /// The intended send time of the next frame.
    pub fn due_ns(&self) -> u64 {
        self.intended_ns(self.next)
    }

    /// If the next frame is due at `now_ns` and the window (`in_flight` of `depth` frames) has
    /// room, takes it and returns its intended time. A frame that came due while the window was
    /// full is returned later, still with its intended time.
    pub fn take_due(&mut self, now_ns: u64, in_flight: usize, depth: usize) -> Option<u64> {
        let due = self.due_ns();
        if due > now_ns || in_flight >= depth {
            return None;
        }
        self.next += 1;
        Some(due)
    }
}

/// How many ops may still be sent: the warm-up, then a duration or an op count.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Ops sent (or due) from this time on are measured.
    pub measure_from_ns: u64,
    /// Nothing is sent from this time on.
    pub end_ns: Option<u64>,
    /// Measured ops this connection may still send.
    pub ops_left: Option<u64>,
    pub batch: usize,
}

impl Budget {
    /// The ops of a frame whose latency counts from `from_ns`: `batch`, fewer at the end of an op
    /// count, 0 once the run is over. Takes them from the op count.
    pub fn frame_ops(&mut self, from_ns: u64) -> usize {
        if self.end_ns.is_some_and(|end| from_ns >= end) {
            return 0;
        }
        if from_ns < self.measure_from_ns {
            return self.batch;
        }
        match &mut self.ops_left {
            None => self.batch,
            Some(left) => {
                let ops = (*left).min(self.batch as u64);
                *left -= ops;
                ops as usize
            }
        }
    }

    pub fn is_measured(&self, from_ns: u64) -> bool {
        from_ns >= self.measure_from_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MS: u64 = 1_000_000;

    #[test]
    fn latency_rounds_to_microseconds_and_never_goes_negative() {
        assert_eq!(latency_us(1_000, 3_499), 2);
        assert_eq!(latency_us(1_000, 3_500), 3);
        assert_eq!(latency_us(5_000, 1_000), 0);
    }

    #[test]
    fn connections_share_the_rate_and_interleave() {
        // 1000 ops/s over 4 connections, 2 ops per frame: each connection sends 125 frames/s.
        let pacers: Vec<Pacer> = (0..4).map(|c| Pacer::new(1000.0, 4, c, 2)).collect();
        assert_eq!(pacers[0].intended_ns(1), 8 * MS);
        assert_eq!(pacers[1].intended_ns(0), 2 * MS);
        assert_eq!(pacers[3].intended_ns(2), 16 * MS + 6 * MS);
        let mut times: Vec<u64> = pacers
            .iter()
            .flat_map(|p| (0..).map(|k| p.intended_ns(k)).take_while(|&t| t < 1000 * MS))
            .collect();
        assert_eq!(times.len() * 2, 1000, "1000 ops in the first second");
        times.sort_unstable();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] == 2 * MS),
            "evenly spaced arrivals"
        );
    }

    #[test]
    fn take_due_waits_for_the_time_and_for_room() {
        let mut pacer = Pacer::new(1000.0, 1, 0, 1);
        assert_eq!(pacer.take_due(0, 0, 2), Some(0));
        assert_eq!(pacer.take_due(0, 1, 2), None, "frame 1 is not due until 1 ms");
        assert_eq!(pacer.take_due(5 * MS, 2, 2), None, "window full");
        assert_eq!(
            pacer.take_due(5 * MS, 1, 2),
            Some(MS),
            "late, but keeps its intended time"
        );
        assert_eq!(pacer.take_due(5 * MS, 1, 3), Some(2 * MS));
    }

    #[test]
    fn budget_by_duration_and_by_op_count() {
        let mut by_time = Budget {
            measure_from_ns: 100,
            end_ns: Some(200),
            ops_left: None,
            batch: 4,
        };
        assert_eq!(by_time.frame_ops(50), 4);
        assert!(!by_time.is_measured(50));
        assert!(by_time.is_measured(100));
        assert_eq!(by_time.frame_ops(199), 4);
        assert_eq!(by_time.frame_ops(200), 0);

        let mut by_count = Budget {
            measure_from_ns: 100,
            end_ns: None,
            ops_left: Some(10),
            batch: 4,
        };
        assert_eq!(by_count.frame_ops(0), 4, "warm-up ops do not count");
        assert_eq!(by_count.ops_left, Some(10));
        let frames: Vec<usize> = (0..5).map(|_| by_count.frame_ops(150)).collect();
        assert_eq!(frames, [4, 4, 2, 0, 0]);
    }

    /// A simulated open-loop connection against a FIFO server that answers each frame after
    /// `service_ns` but does nothing between `stall_from` and `stall_to`. Returns, per frame, its
    /// intended time, the time it was actually written, and the time its reply arrived.
    fn simulate(rate: f64, depth: usize, run_ns: u64, service_ns: u64, stall: (u64, u64)) -> Vec<(u64, u64, u64)> {
        let mut pacer = Pacer::new(rate, 1, 0, 1);
        let mut in_flight: VecDeque<(u64, u64, u64)> = VecDeque::new();
        let mut done = Vec::new();
        let mut server_free = 0u64;
        let mut now = 0u64;
        while pacer.due_ns() < run_ns || !in_flight.is_empty() {
            while pacer.due_ns() < run_ns {
                let Some(intended) = pacer.take_due(now, in_flight.len(), depth) else {
                    break;
                };
                let mut start = now.max(server_free);
                if (stall.0..stall.1).contains(&start) {
                    start = stall.1;
                }
                server_free = start + service_ns;
                in_flight.push_back((intended, now, server_free));
            }
            // Advance to the next event: a reply, or the next frame coming due with room for it.
            let next_reply = in_flight.front().map(|f| f.2);
            let next_due = (in_flight.len() < depth && pacer.due_ns() < run_ns).then(|| pacer.due_ns());
            now = match (next_reply, next_due) {
                (Some(r), Some(d)) => r.min(d),
                (Some(r), None) => r,
                (None, Some(d)) => d,
                (None, None) => break,
            };
            while in_flight.front().is_some_and(|f| f.2 <= now) {
                done.push(in_flight.pop_front().unwrap());
            }
        }
        done
    }

    #[test]
    fn a_stall_shows_in_every_frame_that_came_due_during_it() {
        // 1000 frames/s for 1 s, 50 µs service, a 100 ms stall at 300 ms, 16 frames of window.
        let frames = simulate(1000.0, 16, 1000 * MS, 50_000, (300 * MS, 400 * MS));
        assert_eq!(frames.len(), 1000, "every frame is answered");
        let corrected: Vec<u64> = frames.iter().map(|&(i, _, d)| latency_us(i, d)).collect();
        let naive: Vec<u64> = frames.iter().map(|&(_, s, d)| latency_us(s, d)).collect();
        let slow = |latencies: &[u64]| latencies.iter().filter(|&&l| l >= 10_000).count();
        // Frames due from 300 to ~390 ms wait at least 10 ms: about 90, plus the backlog's drain.
        let slow_corrected = slow(&corrected);
        assert!((85..=110).contains(&slow_corrected), "{slow_corrected} slow frames");
        assert_eq!(
            *corrected.iter().max().unwrap(),
            100_050,
            "the first frame of the stall waits it all"
        );
        // Measured from the actual write, only the frames already in the window see the stall.
        assert!(slow(&naive) <= 16, "{} naively slow frames", slow(&naive));
        // Outside the stall's shadow latency is the service time.
        assert_eq!(corrected[100], 50);
        assert_eq!(corrected[900], 50);
    }
}
