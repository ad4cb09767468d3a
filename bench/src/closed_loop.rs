//! The closed loop: each connection keeps `--pipeline` frames of `--batch` ops in flight, writing
//! a new frame as soon as a reply frees a slot. Latency is per frame, from the write of the frame
//! (all frames planned in one round share the time taken just before they are encoded) to the read
//! that completed its reply; every op of the frame gets that latency.

use std::time::Duration;

use crate::connection::{Conn, Wire};
use crate::error::BenchError;
use crate::limits::REPLY_TIMEOUT_MS;

impl<W: Wire> Conn<W> {
    /// Runs the closed loop until the budget is spent and every frame is answered.
    pub fn run_closed(&mut self) -> Result<(), BenchError> {
        self.set_read_timeout(Duration::from_millis(REPLY_TIMEOUT_MS))?;
        let mut sending = true;
        loop {
            if sending && self.aborted() {
                sending = false;
            }
            if sending {
                let now_ns = self.clock.now_ns();
                while self.in_flight() < self.depth {
                    if !self.push_frame(now_ns) {
                        sending = false;
                        break;
                    }
                }
                self.flush()?;
            }
            if self.in_flight() == 0 {
                return Ok(());
            }
            self.read_replies()?;
        }
    }
}
