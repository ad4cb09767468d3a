//! How names are drawn: uniform, zipf or one hot name. A distribution yields a name index in
//! `0..names`; `bench:{index}` is the name, and index 0 is the hottest under `zipf` and the hot name
//! under `hot`.

use rand::Rng;

use crate::zipf::Zipf;

/// `--dist` as parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DistSpec {
    Uniform,
    /// Zipf with exponent `s` over the names, `bench:0` the most frequent.
    Zipf {
        s: f64,
    },
    /// A fraction of the ops on `bench:0`, the rest uniform over the other names.
    Hot,
}

impl DistSpec {
    /// `uniform`, `zipf:S` (S > 0) or `hot`.
    pub fn parse(text: &str) -> Result<DistSpec, String> {
        match text.trim() {
            "uniform" => Ok(DistSpec::Uniform),
            "hot" => Ok(DistSpec::Hot),
            other => {
                let Some(s) = other.strip_prefix("zipf:") else {
                    return Err(format!("dist {other:?}: expected uniform, zipf:S or hot"));
                };
                let s: f64 = s
                    .parse()
                    .map_err(|_| format!("dist {other:?}: {s:?} is not a zipf exponent"))?;
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!("dist {other:?}: the zipf exponent must be above zero"));
                }
                Ok(DistSpec::Zipf { s })
            }
        }
    }

    /// The spelling `parse` accepts.
    pub fn label(&self) -> String {
        match self {
            DistSpec::Uniform => "uniform".to_string(),
            DistSpec::Zipf { s } => format!("zipf:{s}"),
            DistSpec::Hot => "hot".to_string(),
        }
    }
}

/// The index of the hot name under `DistSpec::Hot`.
pub const HOT_NAME: u64 = 0;

/// A ready-to-sample distribution over `0..names`.
#[derive(Debug, Clone)]
pub enum NameDist {
    Uniform { names: u64 },
    Zipf(Zipf),
    Hot { names: u64, fraction: f64 },
}

impl NameDist {
    pub fn new(spec: DistSpec, names: u64, hot_fraction: f64) -> NameDist {
        assert!(names >= 1);
        match spec {
            DistSpec::Uniform => NameDist::Uniform { names },
            DistSpec::Zipf { s } => NameDist::Zipf(Zipf::new(names, s)),
            DistSpec::Hot => {
                assert!((0.0..=1.0).contains(&hot_fraction));
                NameDist::Hot {
                    names,
                    fraction: hot_fraction,
                }
            }
        }
    }

    /// A name index in `0..names`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            NameDist::Uniform { names } => rng.gen_range(0..*names),
            NameDist::Zipf(zipf) => zipf.sample(rng) - 1,
            NameDist::Hot { names, fraction } => {
                if *names == 1 || rng.gen_bool(*fraction) {
                    HOT_NAME
                } else {
                    rng.gen_range(1..*names)
                }
            }
        }
    }

    pub fn is_uniform(&self) -> bool {
        matches!(self, NameDist::Uniform { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn parse_spellings() {
        assert_eq!(DistSpec::parse("uniform"), Ok(DistSpec::Uniform));
        assert_eq!(DistSpec::parse("hot"), Ok(DistSpec::Hot));
        assert_eq!(DistSpec::parse("zipf:1.0"), Ok(DistSpec::Zipf { s: 1.0 }));
        assert_eq!(DistSpec::parse("zipf:0.99"), Ok(DistSpec::Zipf { s: 0.99 }));
        for bad in [
            "", "zipf", "zipf:", "zipf:0", "zipf:-1", "zipf:x", "zipf:inf", "normal", "hot:0.5",
        ] {
            assert!(DistSpec::parse(bad).is_err(), "{bad:?} should be refused");
        }
        for spec in [DistSpec::Uniform, DistSpec::Hot, DistSpec::Zipf { s: 1.25 }] {
            assert_eq!(DistSpec::parse(&spec.label()), Ok(spec));
        }
    }

    #[test]
    fn uniform_covers_the_range_evenly() {
        let dist = NameDist::new(DistSpec::Uniform, 100, 0.0);
        let mut rng = SmallRng::seed_from_u64(11);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[dist.sample(&mut rng) as usize] += 1;
        }
        // Every name drawn, each within 20% of the expected 1000.
        assert!(counts.iter().all(|&c| (800..=1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn zipf_names_start_at_index_zero() {
        let dist = NameDist::new(DistSpec::Zipf { s: 1.0 }, 1000, 0.0);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut counts = vec![0u32; 1000];
        for _ in 0..200_000 {
            counts[dist.sample(&mut rng) as usize] += 1;
        }
        let ratio = f64::from(counts[0]) / f64::from(counts[9]);
        assert!((8.5..=11.5).contains(&ratio), "bench:0 / bench:9 = {ratio}");
        assert!(counts[0] > counts[1] && counts[1] > counts[2]);
    }

    #[test]
    fn hot_fraction_is_honoured() {
        for fraction in [0.0, 0.1, 0.5, 0.9, 1.0] {
            let dist = NameDist::new(DistSpec::Hot, 1000, fraction);
            let mut rng = SmallRng::seed_from_u64(9);
            let draws = 100_000;
            let mut hot = 0u32;
            for _ in 0..draws {
                let name = dist.sample(&mut rng);
                assert!(name < 1000);
                hot += u32::from(name == HOT_NAME);
            }
            let share = f64::from(hot) / f64::from(draws);
            assert!(
                (share - fraction).abs() <= 0.01,
                "fraction {fraction}: hot share {share}"
            );
        }
        let single = NameDist::new(DistSpec::Hot, 1, 0.0);
        assert_eq!(single.sample(&mut SmallRng::seed_from_u64(1)), HOT_NAME);
    }
}
