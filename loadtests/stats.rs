//! Latency statistics: nearest-rank percentiles, mean, extremes, and the log-scale buckets
//! the SVG histograms draw.

use serde::{Deserialize, Serialize};

/// Summary of a set of latencies, all in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) min_ms: f64,
    pub(crate) mean_ms: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

/// Nearest-rank percentile of sorted samples (`q` in 0..=1).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let sum: f64 = sorted.iter().sum();
    Some(Summary {
        count: sorted.len(),
        min_ms: sorted[0],
        mean_ms: sum / sorted.len() as f64,
        p50_ms: percentile(&sorted, 0.50),
        p90_ms: percentile(&sorted, 0.90),
        p99_ms: percentile(&sorted, 0.99),
        p999_ms: percentile(&sorted, 0.999),
        max_ms: sorted[sorted.len() - 1],
    })
}

/// Log-scale histogram buckets: `per_decade` buckets per factor of ten from `low_ms`.
#[derive(Debug, Clone)]
pub(crate) struct LogBuckets {
    pub(crate) low_ms: f64,
    pub(crate) per_decade: usize,
    pub(crate) counts: Vec<u64>,
}

impl LogBuckets {
    /// Buckets covering all samples, starting at the power of ten at or below the smallest.
    pub(crate) fn of(samples: &[f64], per_decade: usize) -> Self {
        let positive = |value: f64| value.max(0.001);
        let min = samples.iter().copied().map(positive).fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().map(positive).fold(0.0, f64::max);
        let (min, max) = if samples.is_empty() { (1.0, 10.0) } else { (min, max) };
        let low_ms = 10f64.powf(min.log10().floor());
        let high_ms = 10f64.powf(max.log10().floor() + 1.0);
        let decades = (high_ms / low_ms).log10().round().max(1.0) as usize;
        let mut counts = vec![0; decades * per_decade];
        for &sample in samples {
            let position = (positive(sample) / low_ms).log10() * per_decade as f64;
            let index = (position.floor().max(0.0) as usize).min(counts.len() - 1);
            counts[index] += 1;
        }
        Self { low_ms, per_decade, counts }
    }

    /// Lower edge of bucket `index` in milliseconds.
    pub(crate) fn edge(&self, index: usize) -> f64 {
        self.low_ms * 10f64.powf(index as f64 / self.per_decade as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let summary = summarize(&samples).expect("samples");
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p90_ms, 90.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(summary.min_ms, 1.0);
        assert!(summarize(&[]).is_none());
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn buckets_cover_samples() {
        let buckets = LogBuckets::of(&[0.5, 3.0, 30.0, 999.0], 10);
        assert_eq!(buckets.low_ms, 0.1);
        assert_eq!(buckets.counts.iter().sum::<u64>(), 4);
        assert_eq!(buckets.counts.len(), 40);
        assert!((buckets.edge(10) - 1.0).abs() < 1e-9);
    }
}
