//! The progress bar: on stderr, only when stderr is a terminal and neither `--json` nor
//! `--no-progress` was given. A duration run shows a bar over warm-up plus measurement; an op-count
//! run shows a spinner. Both show the current rate.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::Length;

pub struct Progress {
    bar: Option<ProgressBar>,
    last_ops: u64,
    last_elapsed: Duration,
}

impl Progress {
    pub fn new(wanted: bool, length: Length, warmup: Duration) -> Progress {
        let bar = (wanted && std::io::stderr().is_terminal()).then(|| {
            let bar = match length {
                Length::Duration(duration) => {
                    let bar = ProgressBar::new((warmup + duration).as_millis() as u64);
                    bar.set_style(
                        ProgressStyle::with_template("{elapsed:>4} [{bar:40}] {msg}")
                            .expect("valid template")
                            .progress_chars("=> "),
                    );
                    bar
                }
                Length::Ops(_) => {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template("{elapsed:>4} {spinner} {msg}").expect("valid template"),
                    );
                    bar
                }
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar
        });
        Progress {
            bar,
            last_ops: 0,
            last_elapsed: Duration::ZERO,
        }
    }

    /// Redraws with the time since the start and the ops answered so far (warm-up included).
    pub fn tick(&mut self, elapsed: Duration, ops: u64, warming_up: bool) {
        let Some(bar) = &self.bar else {
            return;
        };
        let window = elapsed.saturating_sub(self.last_elapsed).as_secs_f64();
        if window > 0.0 {
            let rate = ops.saturating_sub(self.last_ops) as f64 / window;
            let phase = if warming_up { "warm-up " } else { "" };
            bar.set_message(format!("{phase}{ops} ops, {rate:.0} ops/s"));
        }
        bar.set_position(elapsed.as_millis() as u64);
        bar.tick();
        self.last_ops = ops;
        self.last_elapsed = elapsed;
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
