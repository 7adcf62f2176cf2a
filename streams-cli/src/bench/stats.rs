//! What the bench computes from its samples: percentiles, throughput over time, and the
//! way figures are printed.

use serde::Serialize;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

impl Latency {
    /// The percentiles of `sorted` (ascending).
    pub(crate) fn of_sorted(sorted: &[u64]) -> Self {
        Latency {
            p50_us: quantile(sorted, 0.50),
            p90_us: quantile(sorted, 0.90),
            p99_us: quantile(sorted, 0.99),
            p999_us: quantile(sorted, 0.999),
            max_us: sorted.last().copied().unwrap_or(0),
        }
    }

    /// `p50 … max` as the report prints it.
    pub(crate) fn render(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            micros(self.p50_us),
            micros(self.p90_us),
            micros(self.p99_us),
            micros(self.p999_us),
            micros(self.max_us),
        )
    }
}

/// The `q` quantile of `sorted` (ascending), by nearest rank; 0 when empty.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Messages per second in each of `buckets` equal intervals from 0 to the last of
/// `times_us` (microseconds since the start, in any order): `(interval end in
/// seconds, rate)`.
pub(crate) fn throughput_over_time(times_us: &[u64], buckets: usize) -> Vec<(f64, f64)> {
    let Some(&end) = times_us.iter().max() else {
        return Vec::new();
    };
    let buckets = buckets.max(1);
    // At least a microsecond per bucket, so that a run shorter than `buckets` µs
    // does not divide by zero.
    let width = (end / buckets as u64 + 1).max(1);
    let mut counts = vec![0u64; buckets];
    for &t in times_us {
        counts[((t / width) as usize).min(buckets - 1)] += 1;
    }
    let secs = width as f64 / 1e6;
    counts
        .iter()
        .enumerate()
        .map(|(i, &n)| ((i + 1) as f64 * secs, n as f64 / secs))
        .collect()
}

/// Points of the latency percentile curve of `sorted` (ascending): `(nines, µs)` where
/// `nines` is `-log10(1 - q)`, so p90 is at 1, p99 at 2, p99.9 at 3; up to the
/// resolution the sample count allows.
pub(crate) fn percentile_curve(sorted: &[u64]) -> Vec<(f64, u64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let top = (sorted.len() as f64).log10();
    let steps = 200;
    (0..=steps)
        .map(|i| {
            let nines = top * i as f64 / steps as f64;
            if i == steps {
                // The curve ends at the slowest message.
                return (nines, sorted[sorted.len() - 1]);
            }
            (nines, quantile(sorted, 1.0 - 10f64.powf(-nines)))
        })
        .collect()
}

/// Per second of `secs`; 0 for no time.
pub(crate) fn per_second(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// A whole number with thousands separators: `1,234,567`.
pub(crate) fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in microseconds, in the unit that reads best.
pub(crate) fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[7], 0.999), 7);
        let l = Latency::of_sorted(&v);
        assert_eq!((l.p50_us, l.p90_us, l.max_us), (500, 900, 1000));
        assert_eq!(Latency::of_sorted(&[]), Latency::default());
    }

    #[test]
    fn throughput_buckets_count_every_message() {
        // 1,000 messages a millisecond apart: one second at 1,000 msg/s.
        let times: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let curve = throughput_over_time(&times, 10);
        assert_eq!(curve.len(), 10);
        let counted: f64 = curve.iter().map(|(_, r)| r * 0.100_001).sum();
        assert!((counted - 1000.0).abs() < 1.0, "{counted}");
        for (_, rate) in &curve[..9] {
            assert!((rate - 1000.0).abs() < 20.0, "{curve:?}");
        }
        assert!(throughput_over_time(&[], 10).is_empty());
        assert_eq!(throughput_over_time(&[0, 0], 4).len(), 4);
    }

    #[test]
    fn percentile_curve_reaches_the_slowest() {
        let v: Vec<u64> = (1..=1000).collect();
        let curve = percentile_curve(&v);
        assert_eq!(curve[0], (0.0, 1));
        let (nines, last) = *curve.last().unwrap();
        assert!((nines - 3.0).abs() < 1e-9);
        assert_eq!(last, 1000);
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(percentile_curve(&[]).is_empty());
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(micros(1_500), "1.50 ms");
        assert_eq!(micros(42), "42 µs");
        assert_eq!(micros(2_500_000), "2.50 s");
        assert_eq!(per_second(10, 0.0), 0.0);
        assert_eq!(per_second(10, 2.0), 5.0);
    }
}
