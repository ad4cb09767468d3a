//! Hot-counter detection: which counters are written fast enough to be worth splitting.
//!
//! Measuring every counter's rate would cost memory per counter. Instead one increment in
//! `sample_every` (on average) feeds a space-saving heavy-hitters sketch of `HOT_SKETCH_SLOTS`
//! entries, and the shard reads the sketch once per tick and clears it:
//! - the per-increment cost is one decrement of the `Sampler` countdown; the sketch update (a linear
//!   scan of 32 entries) runs once per `sample_every` increments;
//! - the countdown restarts at a random gap in `1..2N` (mean N), so a periodic access pattern cannot
//!   hide a counter from the sampler;
//! - space-saving keeps, for each tracked counter, a count and the error inherited when it replaced
//!   another; `count - error` never exceeds its true number of samples, and any counter with more
//!   than `1/HOT_SKETCH_SLOTS` of the samples in a tick is always tracked;
//! - the estimated rate is `(count - error) * sample_every * 1000 / elapsed_ms`: a lower bound of
//!   the sampled rate, so sketch noise never splits a cold counter.
//!
//! Split counters are not sampled: their owner counts their increments exactly (its own plus the
//! slots' op counts) and decides merges from that.

use crate::limits::HOT_SKETCH_SLOTS;

/// Decides which increments are sampled.
pub struct Sampler {
    every: u32,
    countdown: u32,
    rng: u64,
}

impl Sampler {
    pub fn new(every: u32, seed: u64) -> Sampler {
        assert!(every > 0);
        let mut sampler = Sampler {
            every,
            countdown: 1,
            rng: seed | 1,
        };
        sampler.countdown = sampler.gap();
        sampler
    }

    /// True for the increments that feed the sketch.
    #[inline]
    pub fn hit(&mut self) -> bool {
        self.countdown -= 1;
        if self.countdown > 0 {
            return false;
        }
        self.countdown = self.gap();
        true
    }

    pub fn every(&self) -> u32 {
        self.every
    }

    /// A gap uniform in `1..2 * every` (mean `every`), from xorshift64*.
    fn gap(&mut self) -> u32 {
        if self.every == 1 {
            return 1;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let random = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        let gap = 1 + (random % (2 * u64::from(self.every) - 1)) as u32;
        assert!(gap >= 1);
        gap
    }
}

/// A tracked counter: its identity in the shard's table and its sample count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SketchItem {
    /// The counter's arena offset (its stable id in the shard).
    pub name_at: u32,
    pub name_len: u8,
    /// The counter's table hash, to find it again without rehashing its name.
    pub table_hash: u64,
    pub count: u64,
    /// Samples of other counters this entry may have inherited; `count - error` is a lower bound.
    pub error: u64,
}

impl SketchItem {
    /// Samples that surely belong to this counter.
    pub fn count_min(&self) -> u64 {
        self.count - self.error
    }
}

/// Space-saving sketch over the samples of one tick.
pub struct HotSketch {
    items: [SketchItem; HOT_SKETCH_SLOTS],
    len: usize,
    samples: u64,
}

impl HotSketch {
    pub fn new() -> HotSketch {
        HotSketch {
            items: [SketchItem::default(); HOT_SKETCH_SLOTS],
            len: 0,
            samples: 0,
        }
    }

    pub fn observe(&mut self, name_at: u32, name_len: u8, table_hash: u64) {
        self.samples += 1;
        let items = &mut self.items[..self.len];
        if let Some(item) = items.iter_mut().find(|item| item.name_at == name_at) {
            item.count += 1;
            return;
        }
        if self.len < HOT_SKETCH_SLOTS {
            self.items[self.len] = SketchItem {
                name_at,
                name_len,
                table_hash,
                count: 1,
                error: 0,
            };
            self.len += 1;
            return;
        }
        let min = self
            .items
            .iter_mut()
            .min_by_key(|item| item.count)
            .expect("the sketch has slots");
        let error = min.count;
        *min = SketchItem {
            name_at,
            name_len,
            table_hash,
            count: error + 1,
            error,
        };
    }

    pub fn items(&self) -> &[SketchItem] {
        &self.items[..self.len]
    }

    /// Samples observed since the last clear.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.samples = 0;
    }
}

impl Default for HotSketch {
    fn default() -> HotSketch {
        HotSketch::new()
    }
}

/// Events per second from a count over `elapsed_ms` (saturating; `elapsed_ms` must be positive).
pub fn rate_per_sec(events: u64, elapsed_ms: u64) -> u64 {
    assert!(elapsed_ms > 0);
    let rate = u128::from(events) * 1000 / u128::from(elapsed_ms);
    u64::try_from(rate).unwrap_or(u64::MAX)
}

/// The estimated increment rate of a sketch item: its guaranteed samples scaled by the sampling
/// period.
pub fn sampled_rate_per_sec(item: &SketchItem, sample_every: u32, elapsed_ms: u64) -> u64 {
    rate_per_sec(item.count_min().saturating_mul(u64::from(sample_every)), elapsed_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_hits_one_in_n_on_average() {
        let mut sampler = Sampler::new(16, 12345);
        let hits = (0..160_000).filter(|_| sampler.hit()).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        let mut every = Sampler::new(1, 1);
        assert!((0..100).all(|_| every.hit()));
    }

    #[test]
    fn sketch_finds_the_heavy_hitter_among_many() {
        let mut sketch = HotSketch::new();
        // One counter takes 1/4 of the samples; 1000 others share the rest.
        for i in 0..40_000u32 {
            if i % 4 == 0 {
                sketch.observe(7, 1, 70);
            } else {
                sketch.observe(1000 + i % 1000, 1, 0);
            }
        }
        let hot = sketch
            .items()
            .iter()
            .find(|item| item.name_at == 7)
            .expect("heavy hitter tracked");
        assert!(hot.count_min() <= 10_000);
        assert!(hot.count >= 10_000);
        // The guaranteed count is close: the error is at most samples / slots.
        assert!(hot.count_min() >= 10_000 - 40_000 / HOT_SKETCH_SLOTS as u64);
        let others = sketch
            .items()
            .iter()
            .filter(|item| item.name_at != 7)
            .map(|item| item.count_min())
            .max();
        assert!(others.unwrap_or(0) <= 40, "{others:?}");
        assert_eq!(sketch.samples(), 40_000);
        sketch.clear();
        assert!(sketch.items().is_empty());
    }

    #[test]
    fn rates_scale_by_sampling_and_time() {
        let item = SketchItem {
            count: 500,
            error: 100,
            ..SketchItem::default()
        };
        // 400 guaranteed samples * 16 per sample over 100 ms = 64 000/s.
        assert_eq!(sampled_rate_per_sec(&item, 16, 100), 64_000);
        assert_eq!(rate_per_sec(5, 1000), 5);
        assert_eq!(rate_per_sec(u64::MAX, 1), u64::MAX);
    }
}
