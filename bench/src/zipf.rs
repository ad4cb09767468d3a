//! A Zipf sampler over ranks `1..=n` with exponent `s` (rank k drawn with probability proportional
//! to 1/k^s), by rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to
//! generate variates from monotone discrete distributions", 1996). It needs O(1) memory and a
//! couple of draws per sample whatever `n`, so a zipf over a billion names costs nothing to set up.
//!
//! The idea: `h(x) = x^-s` is decreasing, so the area under it from `k - 1/2` to `k + 1/2` is close
//! to (and, with the acceptance test, exactly stands in for) the weight of rank k. A uniform draw of
//! area is inverted through the integral of `h` to a real `x`, rounded to a rank, and accepted
//! unless it fell into the small part of the area that belongs to no rank.

use rand::Rng;

/// A Zipf distribution over `1..=n`.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s_cut: f64,
}

impl Zipf {
    /// `n` ≥ 1 ranks, exponent `s` > 0.
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1, "a zipf needs at least one rank");
        assert!(s.is_finite(), "zipf exponent must be finite");
        assert!(s > 0.0, "zipf exponent must be above zero");
        let n = n as f64;
        let mut zipf = Zipf {
            n,
            s,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s_cut: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(n + 0.5);
        zipf.s_cut = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        zipf
    }

    /// A rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            let u = self.h_integral_n + rng.gen::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.s_cut || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// `x^-s`.
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// An antiderivative of `h`: `(x^(1-s) - 1) / (1-s)`, which tends to `ln x` at `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.s) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (ln1p_over_x(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, continuous at 0.
fn ln1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, continuous at 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn frequencies(n: u64, s: f64, draws: u32) -> Vec<u32> {
        let zipf = Zipf::new(n, s);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u32; n as usize + 1];
        for _ in 0..draws {
            let k = zipf.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} outside 1..={n}");
            counts[k as usize] += 1;
        }
        counts
    }

    #[test]
    fn rank_one_is_ten_times_rank_ten_at_s_one() {
        let counts = frequencies(1000, 1.0, 400_000);
        let ratio = f64::from(counts[1]) / f64::from(counts[10]);
        assert!((8.5..=11.5).contains(&ratio), "rank 1 / rank 10 = {ratio}");
        let ratio = f64::from(counts[2]) / f64::from(counts[20]);
        assert!((8.5..=11.5).contains(&ratio), "rank 2 / rank 20 = {ratio}");
    }

    #[test]
    fn frequencies_match_the_exact_probabilities() {
        for s in [0.5, 0.99, 1.0, 1.5, 3.0] {
            let n = 50u64;
            let draws = 200_000u32;
            let counts = frequencies(n, s, draws);
            let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            for k in [1u64, 2, 3, 7, 50] {
                let expected = f64::from(draws) * (k as f64).powf(-s) / norm;
                let got = f64::from(counts[k as usize]);
                // Five standard deviations of a binomial count, plus a little for tiny expectations.
                let tolerance = 5.0 * expected.sqrt() + 5.0;
                assert!(
                    (got - expected).abs() <= tolerance,
                    "s={s} rank {k}: {got} draws, expected {expected:.0}"
                );
            }
        }
    }

    #[test]
    fn one_rank_is_always_drawn() {
        let zipf = Zipf::new(1, 1.2);
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| zipf.sample(&mut rng) == 1));
    }

    #[test]
    fn large_n_stays_in_range_and_is_skewed() {
        let zipf = Zipf::new(1_000_000_000, 1.0);
        let mut rng = SmallRng::seed_from_u64(3);
        let draws: Vec<u64> = (0..100_000).map(|_| zipf.sample(&mut rng)).collect();
        assert!(draws.iter().all(|k| (1..=1_000_000_000).contains(k)));
        let ones = draws.iter().filter(|&&k| k == 1).count() as f64 / draws.len() as f64;
        // P(1) = 1 / H(1e9) ≈ 1 / 21.3 ≈ 4.7%.
        assert!((0.040..=0.054).contains(&ones), "P(rank 1) = {ones}");
    }
}
